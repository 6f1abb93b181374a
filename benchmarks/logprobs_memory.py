"""Peak memory and time of chunked token log-probs vs. naive full log_softmax + gather.

Forward + backward of the LM-head part only: a random bf16 hidden [N, H] and a bf16 head weight
[V, H] with Qwen's vocabulary (V = 151936).  Each method runs in its own fresh subprocess; its
peak extra memory is the process's RSS high-water mark (VmHWM, reset through
/proc/self/clear_refs after the inputs are allocated) minus the RSS at that point.  Gradients
(d hidden, d weight) are part of both methods' peaks.

    python benchmarks/logprobs_memory.py            # N=4096, H=896
    python benchmarks/logprobs_memory.py --n 2048 --h 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN_VOCAB = 151936
MIB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, REPO)
    import torch

    from ticgrpo.core.logprobs import token_logprobs_from_hidden

    def naive(hidden, weight, targets):
        logits = hidden @ weight.t()  # [N, V] bf16
        return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1), None

    def ours(hidden, weight, targets):
        return token_logprobs_from_hidden(hidden, weight, None, targets, 1.0, args.chunk, args.entropy)

    fn = naive if args.worker == "naive" else ours

    def step(n: int, h: int, v: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        hidden = (torch.randn(n, h, generator=g) * 0.5).to(torch.bfloat16).requires_grad_()
        weight = (torch.randn(v, h, generator=g) * 0.05).to(torch.bfloat16).requires_grad_()
        targets = torch.randint(0, v, (n,), generator=g)
        return hidden, weight, targets

    def run(hidden, weight, targets):
        logp, ent = fn(hidden, weight, targets)
        loss = logp.sum() + (ent.sum() if ent is not None else 0.0)
        loss.backward()
        return logp.detach()

    run(*step(64, args.h, 4096, 1))  # warm up kernels on a tiny problem
    hidden, weight, targets = step(args.n, args.h, QWEN_VOCAB, 0)
    exact = _reset_peak()
    base = _status_kib("VmRSS" if exact else "VmHWM")
    t0 = time.perf_counter()
    logp = run(hidden, weight, targets)
    elapsed = time.perf_counter() - t0
    peak = _status_kib("VmHWM") - base
    print(
        json.dumps(
            {
                "peak_mib": peak / 1024,
                "time_s": elapsed,
                "exact_peak": exact,
                "logp_sum": float(logp.double().sum()),
                "grad_h_norm": float(hidden.grad.double().norm()),
                "grad_w_norm": float(weight.grad.double().norm()),
            }
        )
    )


def _spawn(method: str, args: argparse.Namespace, chunk: int, entropy: bool = False) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        method,
        "--n",
        str(args.n),
        "--h",
        str(args.h),
        "--chunk",
        str(chunk),
    ] + (["--entropy"] if entropy else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="completion tokens (rows)")
    p.add_argument("--h", type=int, default=896, help="hidden size (Qwen2.5-0.5B: 896)")
    p.add_argument("--chunks", type=int, nargs="+", default=[1024, 512])
    p.add_argument("--worker", choices=["naive", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--entropy", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return

    logits_mib = args.n * QWEN_VOCAB * 2 / MIB
    print(
        f"N={args.n} H={args.h} V={QWEN_VOCAB} bf16, forward+backward of the LM head; "
        f"bf16 logits of the completion positions N×V×2 = {logits_mib:.0f} MiB"
    )
    rows = [("naive log_softmax+gather", _spawn("naive", args, 0))]
    for c in args.chunks:
        rows.append((f"ours chunk={c}", _spawn("ours", args, c)))
    rows.append((f"ours chunk={args.chunks[0]} +entropy", _spawn("ours", args, args.chunks[0], True)))
    ref = rows[0][1]
    print(f"{'method':<30}{'peak MiB':>10}{'time s':>9}{'peak/naive':>12}{'time/naive':>12}{'peak/logits':>13}")
    for name, r in rows:
        print(
            f"{name:<30}{r['peak_mib']:>10.0f}{r['time_s']:>9.2f}{r['peak_mib'] / ref['peak_mib']:>12.3f}"
            f"{r['time_s'] / ref['time_s']:>12.2f}{r['peak_mib'] / logits_mib:>13.3f}"
        )
    for name, r in rows[1:]:
        if "entropy" in name:
            continue
        ok = all(abs(r[k] - ref[k]) <= 2e-2 * abs(ref[k]) + 1e-3 for k in ("logp_sum", "grad_h_norm", "grad_w_norm"))
        print(
            f"check {name}: logp sum {r['logp_sum']:.2f} vs {ref['logp_sum']:.2f}, |dh| "
            f"{r['grad_h_norm']:.4g} vs {ref['grad_h_norm']:.4g}, |dW| {r['grad_w_norm']:.4g} vs "
            f"{ref['grad_w_norm']:.4g} -> {'ok' if ok else 'MISMATCH'}"
        )
    if not ref["exact_peak"]:
        print("note: /proc/self/clear_refs not writable; peaks are relative to the earlier high-water mark")


if __name__ == "__main__":
    main()
