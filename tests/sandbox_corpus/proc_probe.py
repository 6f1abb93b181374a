import json, os
me = os.getpid()
seen = {}
for pid in os.listdir('/proc'):
    if not pid.isdigit() or int(pid) == me:
        continue
    got = {}
    for item in ('environ', 'cmdline', 'mem', 'fd', 'maps'):
        path = '/proc/%s/%s' % (pid, item)
        try:
            if item == 'fd':
                got[item] = os.listdir(path)[:5]
            elif item == 'mem':
                with open('/proc/%s/maps' % pid) as m:
                    start = int(m.readline().split('-')[0], 16)
                with open(path, 'rb') as f:
                    f.seek(start)
                    got[item] = len(f.read(16))
            else:
                with open(path, 'rb') as f:
                    got[item] = f.read(300).decode('utf-8', 'replace')
        except Exception as e:
            got[item] = 'ERR ' + type(e).__name__
    seen[pid] = got
print(json.dumps(seen))
