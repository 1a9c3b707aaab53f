#!/usr/bin/env python3
"""Where one function's instructions go, from a callgrind out file (bench/gateway.sh with
KEEP=1 keeps them): its own cost by source file and line (code inlined into it included, which
callgrind_annotate's tree views leave out) and the inclusive cost of each callee.

Usage: cg_function.py OUT 'function name substring' [divisor [lines]]
  divisor: requests in the batch (default 3000, the CG_N2 batch: *.out.2 / *.out.4)
  lines:   how many source lines to list (default 25)
Example: bench/gateway/cg_function.py /tmp/gwbench.X/callgrind/gw-plain.out.4 'upstream_request::prepare'
With CALLERS=1 in the environment it lists instead who calls the matching functions, with the
inclusive cost and count of those calls per request (e.g. who is behind `__memcpy_avx_unaligned`).
"""
import os
import re, sys, collections
path, pat = sys.argv[1], sys.argv[2]
div = float(sys.argv[3]) if len(sys.argv) > 3 else 3000
names = {'fl': {}, 'fn': {}}
def name(kind, s):
    m = re.match(r'\((\d+)\)(?: (.*))?', s)
    if not m: return s
    tab = names['fn' if kind in ('fn','cfn') else 'fl']
    if m.group(2) is not None: tab[m.group(1)] = m.group(2)
    return tab.get(m.group(1), '?')
# Callgrind names each function and file in full once, then by number: a dump after the first
# (`*.out.4`) may use numbers defined in the parts before it. Read their definitions first.
m = re.match(r'(.*\.out)\.(\d+)$', path)
if m:
    for k in [''] + [f'.{i}' for i in range(1, int(m.group(2)))]:
        try:
            for raw in open(m.group(1) + k, errors='replace'):
                for key in ('fn=', 'cfn=', 'fl=', 'fi=', 'fe=', 'cfi=', 'cfl='):
                    if raw.startswith(key):
                        name(key[:-1] if key[-2] != 'n' else 'fn', raw[len(key):].rstrip('\n'))
        except FileNotFoundError:
            pass
fl = fi = fn = None; line = 0
selfc = collections.Counter(); calls = collections.Counter(); ncalls = collections.Counter()
cfn = None; pending_call = False; target = False
callers = collections.Counter(); ncallers = collections.Counter()
by_caller = os.environ.get('CALLERS') == '1'
for raw in open(path, errors='replace'):
    raw = raw.rstrip('\n')
    if not raw: continue
    c = raw[0]
    if raw.startswith(('fl=', 'fi=', 'fe=')):
        v = name('fl', raw[3:])
        if raw.startswith('fl='): fl = v; fi = v
        else: fi = v
        continue
    if raw.startswith('fn='):
        fn = name('fn', raw[3:]); fi = fl; target = pat in fn; continue
    if raw.startswith(('cfi=', 'cfl=')): name('fl', raw[4:]); continue
    if raw.startswith('cfn='): cfn = name('cfn', raw[4:]); continue
    if raw.startswith('cob=') or raw.startswith('ob='): continue
    if raw.startswith('calls='):
        pending_call = True; ncall = int(raw[6:].split()[0]); continue
    if c.isdigit() or c in '+-*':
        parts = raw.split()
        p = parts[0]
        if p == '*': pass
        elif p[0] in '+-': line += int(p)
        else: line = int(p)
        cost = int(parts[1]) if len(parts) > 1 else 0
        if by_caller and pending_call and pat in cfn:
            callers[fn] += cost; ncallers[fn] += ncall
        if target:
            if pending_call:
                calls[cfn] += cost; ncalls[cfn] += ncall
            else:
                selfc[(fi, line)] += cost
        pending_call = False
        continue
if by_caller:
    print(f"calls into '{pat}': {sum(callers.values())/div:.0f} a request, by caller")
    for k, v in callers.most_common(30): print(f"{v/div:8.0f}  x{ncallers[k]/div:.2f}  {k[:150]}")
    sys.exit(0)
tot_self = sum(selfc.values()); tot_calls = sum(calls.values())
print(f"self {tot_self/div:.0f}  calls {tot_calls/div:.0f}  total {(tot_self+tot_calls)/div:.0f}")
byfile = collections.Counter()
for (f, l), v in selfc.items(): byfile[f] += v
print("-- self by file")
for f, v in byfile.most_common(15): print(f"{v/div:8.0f}  {f[-90:]}")
print("-- self by line")
for (f, l), v in selfc.most_common(int(sys.argv[4]) if len(sys.argv) > 4 else 25): print(f"{v/div:8.0f}  {f[-60:]}:{l}")
print("-- calls")
for k, v in calls.most_common(30): print(f"{v/div:8.0f}  x{ncalls[k]/div:.2f}  {k[:150]}")
