import glob
import os
import re
import sys
from collections import defaultdict

d=sys.argv[1]
rows=[]
for f in sorted(glob.glob(d+'/*.log')):
    w=os.path.basename(f)[:-4]
    for line in open(f,errors='replace'):
        m=re.search(r'(\d\d:\d\d:\d\d[,.]\d+) DEBUG peakroute\.(stock|fulfillment): \w+ batch: (.*)',line)
        if not m: continue
        t,stage,spans=m.groups()
        for sp in spans.split(', '):
            mm=re.match(r'([\w-]+)\[(\d+)\] (\d+)-(\d+) \((\d+)\)',sp)
            if mm: rows.append((t.replace(',','.'),w,mm.group(1),int(mm.group(2)),int(mm.group(3)),int(mm.group(4))))
rows.sort()
topic=sys.argv[2] if len(sys.argv)>2 else 'stock-ops'
per=defaultdict(list)
for t,w,tp,p,a,b in rows:
    if tp==topic: per[p].append((t,w,a,b))
for p in sorted(per):
    out=[];cur=None
    for t,w,a,b in per[p]:
        if cur and cur[1]==w and a==cur[3]+1: cur[3]=b; continue
        if cur: out.append(cur)
        cur=[t,w,a,b]
    out.append(cur)
    print(p, ' | '.join(f"{t[:8]} {w} {a}-{b}" for t,w,a,b in out))
