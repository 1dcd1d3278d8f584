import resource, subprocess, sys
progs = {
 "python-small": ["/usr/bin/python3","-c","x=bytearray(50*2**20); print('ok')"],
 "python-big":   ["/usr/bin/python3","-c","x=bytearray(400*2**20); print('ok')"],
 "node-small":   ["node","-e","const b=Buffer.alloc(50*2**20,1); console.log('ok')"],
 "node-big":     ["node","-e","const b=Buffer.alloc(400*2**20,1); console.log('ok')"],
 "java-version": ["java","-Xshare:auto","-version"],
}
for res_name in ("AS","DATA"):
  res = getattr(resource, "RLIMIT_"+res_name)
  for lim in (256*2**20, 1024*2**20):
    for name, argv in progs.items():
      def pre(): resource.setrlimit(res, (lim, lim))
      p = subprocess.run(argv, preexec_fn=pre, capture_output=True, text=True)
      out = (p.stdout+p.stderr).strip().splitlines()
      print(f"{res_name:4} {lim>>20:5}M {name:14} rc={p.returncode:4} {out[-1][:70] if out else ''}")
