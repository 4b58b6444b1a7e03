"""Moving Docker images to hosts: archive reading and trimming, remote inventory, compression, streaming.

Layout:
  refs.py      image references vs host names on the command line; close matches
  archive.py   the `docker save` format: chain IDs, spooling a save, emitting trimmed/checkpoint archives
  layerstore.py  reading layers straight from a local overlay2 store (fast path, digest-checked)
  remote.py    what the remote Docker has (one shell script, parsed) and the docker command lines
  plan.py      what to send where: missing layers, checkpoints, disk and arch checks (pure)
  compress.py  codec choice by measurement and the stream compressors
  stream.py    the OpenSSH byte stream over the host's ControlMaster (rate limit, link probe, progress)
  push.py      orchestration behind `migrate push-image`
  registry.py  where an image came from (RepoDigests), the host's registry probe and pull scripts
  credentials.py  the local Docker credential store; what the host gets (stdin only)
  via.py       --via auto|push|pull: the decision per host and image, the pull on the host
  overlap.py   the host's pull and the SSH stream of the user's layers at the same time
  hostpull.py  playbook `pull:` images (the host pulls, nothing else crosses SSH)
  options.py   push-image's deprecated --bwlimit/--checkpoint spellings
"""
