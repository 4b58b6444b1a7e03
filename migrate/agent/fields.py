"""The job fields, as plain data: one row per field a job may set, in every vocabulary.

One table feeds the agent's validation (`main.SPEC_KEYS`, the integer ranges), jobs.yaml parsing
(`migrate.jobs.spec`), the playbook schema (`migrate.playbook.schema`, hence docs/playbook.md) and a
test that `migrate run` and docs/run.md name every field. It lives in the agent package because the
agent ships alone (a zipapp, stdlib only) and must not import `migrate.jobs`; the client imports it.

Kinds: str, int, bool, size (jobs.yaml: an integer in MiB or a size such as `20g`; playbooks: MiB),
str_list, str_map.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional


class JobField(NamedTuple):
    """One job field: its name in the agent's JSON (and `JobSpec`), and its other spellings."""

    name: str  # key of the JSON the agent's `submit` reads; attribute of JobSpec
    kind: str
    doc: str  # one line, used by the playbook reference and docs/run.md
    check: str  # what the agent checks before anything is queued ("" for integers: their range)
    flag: Optional[str] = None  # `migrate run` option (None: no flag)
    yaml: Optional[str] = None  # key in jobs.yaml
    playbook: Optional[str] = None  # key in a playbook's `run:`
    default: Any = None
    lo: Optional[int] = None  # integer fields: the range the agent accepts
    hi: Optional[int] = None

    def check_text(self) -> str:
        """What the agent checks, in words."""
        return self.check or f"an integer from {self.lo} to {self.hi}"


JOB_FIELDS = (
    JobField("command", "str", "Command to run.", "a non-empty string",
             flag=None, yaml="command", playbook="command"),
    JobField("name", "str", "Job name.", "a string without newlines, at most 200 characters",
             flag="--name", yaml="name", playbook="name"),
    JobField("image", "str", "Run each job in this image (container mode); omit for process mode.",
             "Docker's image reference grammar", flag="--image", yaml="image", playbook="image"),
    JobField("cwd", "str", "Working directory of each job (in the container, or on the host).",
             "exists on the host (process mode), absolute (container mode)",
             flag="--cwd", yaml="cwd", playbook="workdir"),
    JobField("mounts", "str_list", "Bind mounts `host:container[:ro]` (container mode).",
             "HOST:CONTAINER[:ro], an absolute source that exists; needs an image",
             flag="--mount", yaml="mounts", playbook="mounts", default=[]),
    JobField("shm_size", "str", "Shared memory for the container, e.g. `16g`.",
             "a number with b, k, m or g; needs an image",
             flag="--shm-size", yaml="shm_size", playbook="shm_size"),
    JobField("ports", "str_list", "Container ports to publish, `[hostport:]port` (container mode).",
             "[IP:][HOSTPORT:]PORT[/tcp|udp]; needs an image",
             flag="--publish", yaml="ports", playbook="ports", default=[]),
    JobField("env", "str_map", "Environment variables for every job.",
             "names are identifiers, values strings; none the dispatcher sets",
             flag="--env", yaml="env", playbook="env", default={}),
    JobField("python_env", "str", "Run the job in this environment pushed with `migrate push-env` (process mode; "
             "PATH and VIRTUAL_ENV set).", "a name pushed with push-env; no image",
             flag="--python-env", yaml="python_env", playbook="python_env"),
    JobField("gpus", "int", "GPUs each job needs (0 = CPU-only).", "",
             flag="--gpus-per-job", yaml="gpus", playbook="gpus_per_job", default=1, lo=0, hi=64),
    JobField("min_free_mem_mib", "size", "MiB of free GPU memory a GPU needs to be admitted.",
             "",
             flag="--min-free-mem", yaml="min_free_mem", playbook="min_free_mem", lo=0, hi=1 << 30),
    JobField("allow_shared", "bool", "Also admit onto GPUs other people use when `min_free_mem` fits.",
             "needs min_free_mem", flag="--allow-shared", yaml="allow_shared", playbook="allow_shared"),
    JobField("gpu_pool", "str_list", "Only these GPUs: indices or UUIDs.", "a list of non-empty strings",
             flag="--gpu-pool", yaml="gpu_pool", playbook="gpu_pool", default=[]),
    JobField("priority", "int", "Higher runs first.", "",
             flag="--priority", yaml="priority", playbook="priority", default=0, lo=-1000000, hi=1000000),
    JobField("retries", "int", "Retry a failed job this many times.", "",
             flag="--retries", yaml="retries", playbook="retries", default=0, lo=0, hi=100),
    JobField("key", "str", "Idempotency key: a job with this key is queued only once.",
             "a non-empty string of at most 1000 characters", flag="--key", yaml="key", playbook="key"),
    JobField("notify", "str", "Webhook the host posts to when the job (or the run's sweep) ends: "
             "`[FORMAT+]https://...`, FORMAT ntfy, slack, feishu or dingtalk (docs/run.md).",
             "an http(s) URL, an optional known FORMAT+ prefix", flag="--notify", yaml="notify",
             playbook="notify"),
    JobField("sync_back", "str", "`HOST_PATH:LOCAL_DIR`: `migrate wait` pulls HOST_PATH into LOCAL_DIR every "
             "`--every` while the job runs and after it ends (pull-data's rsync).",
             "not sent to the host: this machine pulls", flag="--sync-back", yaml="sync_back",
             playbook="sync_back"),
)

SPEC_KEYS = frozenset(f.name for f in JOB_FIELDS)

# Where jobs.yaml and playbooks spell a field differently (`cwd`/`workdir`, `gpus`/`gpus_per_job`),
# each also accepts the other's spelling, so a job moves between the two files unchanged.
YAML_ALIASES = {f.playbook: f.yaml for f in JOB_FIELDS if f.yaml and f.playbook and f.playbook != f.yaml}
PLAYBOOK_ALIASES = {f.yaml: f.playbook for f in JOB_FIELDS if f.yaml and f.playbook and f.playbook != f.yaml}
