"""The runner: the pod entrypoint that turns one VideoGeneration attempt into an MP4 in the store.

`main` (launcher: checks, torchrun, exit code), `worker` (one rank: pipeline, resume, finish),
`store` (atomic, idempotent output), `encode` (MP4), `report` (status subresource), `inputs`
(config, image), `metrics`, `logs`, `errors`. Data flow in shared/STYLE.md.
"""
