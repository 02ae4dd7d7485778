# Entropy estimates on trajectory-small step000 -> step001 (run with a Python that has numpy):
#   python bench/entropy_estimates.py   (from the repository root; reads ../shared/data/trajectory-small)
# Prints the order-0 and conditional entropies quoted in docs/codec-notes.md.
import numpy as np, json, struct, math
from collections import Counter
def load(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); data=b[8+n:]
    out={}
    for k,v in h.items():
        if k=='__metadata__': continue
        s,e=v['data_offsets']; out[k]=np.frombuffer(data[s:e],dtype=np.uint16)
    return out
def H(counts):
    c=np.array(list(counts),dtype=float); c=c[c>0]; p=c/c.sum(); return -(c*np.log2(p)).sum()
D='../shared/data/trajectory-small/'
a=load(D+'step000.safetensors'); b=load(D+'step001.safetensors')
total=0; bits_global_gap=0; bits_tensor_gap=0; bits_class=0; bits_tensor_bern=0; bits_vals=0; bits_vals_t=0
allgaps=[]; vals=[]
for k in a:
    x=a[k]; y=b[k]; pos=np.nonzero(x!=y)[0]; n=len(x); m=len(pos)
    if m==0: continue
    total+=m
    gaps=np.diff(np.concatenate([[-1],pos])); allgaps+=list(gaps)
    # per-tensor Bernoulli entropy (ideal for iid positions within tensor)
    p=m/n; bits_tensor_bern+= n*(-(p*math.log2(p)+(1-p)*math.log2(1-p))) if p<1 else 0
    # per (tensor, exponent) Bernoulli
    exp=(x>>7)&0xFF
    for e in np.unique(exp):
        sel=exp==e; ne=sel.sum(); me=(sel[pos]).sum() if m else 0
        if 0<me<ne: q=me/ne; bits_class+= ne*(-(q*math.log2(q)+(1-q)*math.log2(1-q)))
    # values: ULP distance with order-preserving map
    def key(v): v=v.astype(np.int64); return np.where(v&0x8000, 0xFFFF-v, v|0x8000)
    d=key(y[pos])-key(x[pos]); vals+=list(d)
    bits_vals_t+=H(Counter(d).values())
gc=Counter(allgaps)
print('changes',total)
print('global gap order0 entropy B/chg', H(gc.values())/total/8)
print('per-tensor bernoulli positions B/chg', bits_tensor_bern/total/8)
print('per (tensor,exponent) bernoulli B/chg', bits_class/total/8)
print('values global order0 B/chg', H(Counter(vals).values())/total/8, ' per-tensor', bits_vals_t/total/8)
print('value histogram', Counter(vals).most_common(8))

# Where native v1's bytes go: per-tensor exp-Golomb buckets (entropy) + raw mantissas + values + tables
bucket_bits=0; mant_bits=0; val_bits=0; tables=0; tot=0
for k in a:
    x=a[k]; y=b[k]; pos=np.nonzero(x!=y)[0]; m=len(pos)
    if m==0: continue
    gaps=np.concatenate([[pos[0]], np.diff(pos)-1])
    lens=np.array([int(g).bit_length() for g in gaps])
    bucket_bits+=H(Counter(lens).values()); mant_bits+=np.maximum(lens-1,0).sum()
    def key(v): v=v.astype(np.int64); return np.where(v&0x8000, 0xFFFF-v, v|0x8000)
    d=key(y[pos])-key(x[pos]); zz=np.where(d>=0, 2*d, -2*d-1)
    val_bits+=H(Counter(zz).values())
    tables+= 3*len(set(lens)) + 3*len(set(zz)) + 2
    tot+=m
print(f'native v1 estimate: buckets {bucket_bits/8/tot:.3f} + mantissas {mant_bits/8/tot:.3f} + values {val_bits/8/tot:.3f} + tables {tables/tot:.3f} B/chg')
