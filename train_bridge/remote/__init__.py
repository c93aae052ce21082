"""Training on a GPU box reached over ssh (your own server, or a RunPod pod made for the run).

`target` parses `ssh://user@host:port` and keeps run/remote.json; `ssh` is the one place the
system `ssh` client is run (host keys verified, secrets on stdin); `sync` copies only what
changed (rsync when both ends have it, else tar over ssh) and rewrites the run's paths for the
remote layout; `session` uploads, starts the trainer detached, streams the live view and pulls
outputs; `runpod` creates, polls, stops and terminates pods through RunPod's REST API.
"""
