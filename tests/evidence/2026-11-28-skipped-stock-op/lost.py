import glob
import os
import re
import sys
from collections import defaultdict

d=sys.argv[1]; topic=sys.argv[2] if len(sys.argv)>2 else 'stock-ops'
for f in sorted(glob.glob(d+'/*.log')):
    w=os.path.basename(f)[:-4]
    deliv=defaultdict(list); proc=defaultdict(list); aside=defaultdict(list); other=defaultdict(list)
    for line in open(f,errors='replace'):
        t=line[11:23]
        m=re.search(r'DEBUG peakroute\.consumer: fetch \d+: (.*)',line)
        if m:
            for part in m.group(1).split('; '):
                mm=re.match(r'([\w-]+)\[(\d+)\] (.*)',part)
                if mm and mm.group(1)==topic:
                    p=int(mm.group(2))
                    for tok in mm.group(3).split():
                        if ':' in tok: other[p].append((t,tok))
                        else: deliv[p].append((t,int(tok)))
            continue
        m=re.search(r'DEBUG peakroute\.\w+: (?:\w+ batch: |set aside )(.*)',line)
        if m:
            isaside='set aside' in line
            for sp in m.group(1).split(', '):
                mm=re.match(r'([\w-]+)\[(\d+)\] (\d+)-(\d+) \((\d+)\)',sp)
                if mm and mm.group(1)==topic:
                    p=int(mm.group(2)); a,b,n=int(mm.group(3)),int(mm.group(4)),int(mm.group(5))
                    (aside if isaside else proc)[p].append((t,a,b,n))
    for p in sorted(set(deliv)|set(proc)):
        dset=[o for _,o in deliv[p]]
        pset=set()
        for _,a,b,n in proc[p]:
            if n==b-a+1: pset.update(range(a,b+1))
        aset=set()
        for _,a,b,n in aside[p]:
            if n==b-a+1: aset.update(range(a,b+1))
        lost=[o for o in dset if o not in pset and o not in aset]
        print(f"{w} {topic}[{p}] delivered {len(dset)} ({min(dset) if dset else '-'}..{max(dset) if dset else '-'}) processed {len(pset)} aside {len(aset)} LOST {lost[:20]} other {other[p][:8]}")
