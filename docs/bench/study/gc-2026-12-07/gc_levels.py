import sys,json,glob,collections
tag=sys.argv[1]
rep=json.load(open(f'/tmp/gcprobe/{tag}.json'))
procs={}
for f in glob.glob(f'/tmp/gcprobe/log-{tag}/*.txt'):
    rows=[]
    for l in open(f):
        p=l.rstrip('\n').split(' ',6); rows.append((float(p[0]),int(p[1]),float(p[2]),int(p[4]),float(p[5]),p[6]))
    procs[f]=rows
for L in rep['levels']:
    t0,t1=L['started_at_unix'],L['ended_at_unix']
    turns=L['turns_played']*L['sessions']
    print(f"S={L['sessions']} turns={turns} wall={t1-t0:.1f}s ttft p50={L['ttft']['p50_s']*1e3:.1f} p99={L['ttft']['p99_s']*1e3:.1f} tok/s={L['throughput']}")
    out=[]
    for f,rows in procs.items():
        w=[r for r in rows if t0<=r[0]<=t1]
        if not w: continue
        before=[r for r in rows if r[0]<t0]
        c0,s0=(before[-1][3],before[-1][4]) if before else (w[0][3]-1, w[0][4]-w[0][2])
        c1,s1=w[-1][3],w[-1][4]
        name=w[-1][5].split(':')[-1][:22] if 'Serve' in w[-1][5] else w[-1][5][:22]
        big=[r[2] for r in w if r[2]>1]
        g2=sum(1 for r in w if r[1]==2)
        out.append((s1-s0,name,c1-c0,g2,len(big),max([r[2] for r in w])))
    for s,name,n,g2,nb,mx in sorted(out,reverse=True)[:6]:
        print(f"   {name:24s} collections~{n:5d} gen2={g2} >1ms={nb:3d} total~{s:7.1f}ms ({s/turns:.3f} ms/turn) max={mx:.1f}")
