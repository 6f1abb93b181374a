"""Reports on training runs, shared by `ticgrpo report`, `ticgrpo compare` and the lab.

    runs      loading run folders (config, metrics.jsonl, eval.jsonl, compare markers)
    stats     intervals and tests over seeds (scipy.stats)
    summary   every number of a comparison report (summary.json)
    markdown  report.md and the lab's tables
    plots     curves.png of a run, the comparison's figures
    report    build_report: all of the above into one folder
    io        JSON lines in, JSON out

The package imports nothing itself, so `ticgrpo train` (which only plots curves.png) does not
load what a comparison report needs; import the module you use.
"""
