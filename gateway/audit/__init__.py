"""The tamper-evident audit log of every request and every admin change (see docs/audit.md).

Modules, by job:
- settings: the ``audit`` config section;  service: wiring from settings (engine, key, spool);
- records / entries / capture / canonical: what is recorded, at which capture level, in which bytes;
- chain: serialised, batched appends under the chain-head lock, checkpoints, the signed head;
- log: AuditLog, the per-process group-commit writer the gateway awaits;  spool: the outage spool;
- hooks: AuditLog at the gateway's request hooks;  admin_recorder: admin changes from one-shot tools;
- verify: recomputes the chain and checks signatures;  signing: Ed25519 keys and statements;
- reader / access / export / router: the auditor API;  retention: purge at a checkpoint;
- cli: ``ward audit`` (the writer's benchmark is ``ward bench audit``).
"""
