"""The container image, checked against its Dockerfile (used by .ci/image.sh; stdlib only).

    image.py declared [DOCKERFILE]                  the Dockerfile's declarations, as JSON
    image.py mounts                                 `podman build -v` arguments: this machine's
                                                    CA bundle and pip configuration, read-only
    image.py config DOCKERFILE INSPECT.json         the built image's config against the Dockerfile
                                                    and against what the project requires of it
    image.py leftovers IMAGE_DIR BASE_DIR           nothing of those mounts was copied into it
    image.py run INSPECT.json IMAGE_DIR WORK_DIR    the image's own file system, run as its user
                                                    (root only, in a private mount namespace)
    image.py packages PYPROJECT PIP_LIST.json       no test or development package in the image

Each check prints `ok: ...` or `FAIL: ...`; a command exits 1 if any check failed.
tests/test_container.py reads the same declarations and the same requirements (`declared`,
`requirements`), so the fast tests and the built image cannot disagree about what is wanted.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOME_VARIABLE = "FOLLOWUPD_HOME"
ROOT_USERS = {"", "root", "0"}
STOP_WAIT = 10.0  # seconds: `docker stop`'s default, and what docs/operations.md promises
FAILED: list[str] = []


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def fail(message: str) -> None:
    FAILED.append(message)
    print(f"FAIL: {message}", flush=True)


def expect(condition: bool, good: str, bad: str) -> bool:
    (ok if condition else fail)(good if condition else bad)
    return condition


# --- the Dockerfile -------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current)
    found = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        found.append((word.upper(), rest.strip()))
    return found


def _command(rest: str) -> list[str]:
    """An exec-form JSON array as it is; a shell form as Docker runs it."""
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def _duration_ns(text: str) -> int:
    units = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return int(sum(float(n) * units[u] for n, u in parts))


def _healthcheck(rest: str) -> dict | None:
    words = rest.split()
    if words and words[0].upper() == "NONE":
        return None
    options: dict = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    rest = rest.split(None, len(options))[-1] if options else rest
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        raise ValueError(f"HEALTHCHECK without CMD: {rest!r}")
    command = command.strip()
    test = ["CMD", *json.loads(command)] if command.startswith("[") else ["CMD-SHELL", command]
    check = {"Test": test}
    for option, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
    ):
        if option in options:
            check[key] = _duration_ns(options[option])
    if "retries" in options:
        check["Retries"] = int(options["retries"])
    return check


def _env(rest: str) -> dict[str, str]:
    if "=" in rest.split()[0]:
        return dict(item.partition("=")[::2] for item in shlex.split(rest))
    key, _, value = rest.partition(" ")  # the legacy `ENV KEY value`
    return {key: value.strip()}


def declared(path: Path) -> dict:
    """What the Dockerfile's last stage declares: the fields `podman image inspect` reports."""
    spec: dict = {}
    for word, rest in _instructions(path.read_text()):
        if word == "FROM":
            spec = {"from": rest.split()[0], "env": {}, "volumes": [], "expose": [], "runs": []}
        elif word == "ENV":
            spec["env"].update(_env(rest))
        elif word == "USER":
            spec["user"] = rest
        elif word == "WORKDIR":
            spec["workdir"] = rest
        elif word == "VOLUME":
            spec["volumes"] += json.loads(rest) if rest.startswith("[") else rest.split()
        elif word == "EXPOSE":
            spec["expose"] += [p if "/" in p else f"{p}/tcp" for p in rest.split()]
        elif word in ("ENTRYPOINT", "CMD"):
            spec[word.lower()] = _command(rest)
        elif word == "HEALTHCHECK":
            spec["healthcheck"] = _healthcheck(rest)
        elif word == "RUN":
            spec["runs"].append(rest)
    return spec


def requirements(spec: dict) -> list[str]:
    """What the project requires of its image, whatever the Dockerfile says: each unmet
    requirement, in words (empty: all met)."""
    problems = []
    user = spec.get("user", "")
    if user.split(":")[0] in ROOT_USERS:
        problems.append(f"USER is {user or 'not set'}: the image must run as a non-root user")
    home = spec.get("env", {}).get(HOME_VARIABLE)
    if not home:
        problems.append(f"ENV {HOME_VARIABLE} is not set")
    else:
        if home not in spec.get("volumes", []):
            problems.append(
                f"{HOME_VARIABLE}={home} is not a VOLUME (VOLUME: {spec.get('volumes') or 'none'})"
            )
        if spec.get("workdir") != home:
            problems.append(f"WORKDIR is {spec.get('workdir')}, not {HOME_VARIABLE}={home}")
    check = spec.get("healthcheck")
    if not check or check["Test"] != ["CMD", "followupd", "health"]:
        test = check["Test"] if check else "none"
        problems.append(f'HEALTHCHECK is {test}, not CMD ["followupd", "health"]')
    if spec.get("entrypoint") != ["followupd"]:
        problems.append(f'ENTRYPOINT is {spec.get("entrypoint")}, not ["followupd"]')
    if spec.get("cmd") != ["run"]:
        problems.append(f'CMD is {spec.get("cmd")}, not ["run"]')
    installs = [run for run in spec.get("runs", []) if "pip install" in run]
    if not installs:
        problems.append("no RUN installs followupd with pip")
    elif any(re.search(r"\[[^]]*\bdev\b", run) for run in installs):
        problems.append("pip installs the dev extra into the image")
    return problems


# --- the build's read-only mounts -----------------------------------------------------------


def _pip_config_files() -> list[Path]:
    """The files pip reads its configuration from, for root, on this machine."""
    home = Path(os.environ.get("HOME", "/root"))
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    candidates = [Path(d) / "pip" / "pip.conf" for d in dirs if d]
    candidates += [Path("/etc/pip.conf"), home / ".pip/pip.conf", home / ".config/pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        candidates.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [path for path in candidates if path.is_file()]


def _ca_bundle() -> Path | None:
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(variable) and Path(os.environ[variable]).is_file():
            return Path(os.environ[variable])
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def mounts() -> list[str]:
    """`-v HOST:CONTAINER:ro` for the CA bundle and pip's configuration, and the local paths
    that configuration names (indexes, links, constraints). The build runs as root, so a file
    under this user's home is mounted under /root. Never copied: a RUN sees them, a layer not."""
    home = os.environ.get("HOME", "/root")
    pairs: dict[str, str] = {}
    bundle = _ca_bundle()
    if bundle:
        pairs["/etc/ssl/certs/ca-certificates.crt"] = str(bundle.resolve())
    for config in _pip_config_files():
        target = str(config)
        if target.startswith(home + "/"):
            target = "/root" + target[len(home) :]
        pairs[target] = str(config.resolve())
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(config)
        for section in parser.sections():
            for value in parser[section].values():
                for word in value.split():
                    local = word.removeprefix("file://")
                    if local.startswith("/") and Path(local).exists():
                        # an index's files lie beside its simple/ folder
                        top = Path(local).parent if local.rstrip("/").endswith("/simple") else None
                        path = top if top and top.is_dir() else Path(local)
                        pairs.setdefault(str(path), str(path.resolve()))
    return [f"{host}:{target}:ro" for target, host in sorted(pairs.items())]


def leftovers(image_dir: Path, base_dir: Path) -> None:
    """The build's mounts left nothing in the image: a path the base has is as the base has
    it; any other is absent, or the empty mount point podman 4.3 leaves behind."""
    empty, copied = [], []
    for line in mounts():
        target = line.split(":")[1]
        inside, before = image_dir / target.lstrip("/"), base_dir / target.lstrip("/")
        if before.is_file():
            if not inside.is_file() or inside.read_bytes() != before.read_bytes():
                copied.append(target)
        elif (inside.is_dir() and any(inside.iterdir())) or (
            inside.is_file() and inside.stat().st_size
        ):
            copied.append(target)
        elif inside.exists():
            empty.append(target)
    expect(
        not copied,
        "nothing of the build's read-only mounts is in the image"
        + (f" (empty mount points left by podman: {', '.join(empty)})" if empty else ""),
        f"the build's mounts are in the image: {', '.join(copied)}",
    )


# --- the image's config against the Dockerfile ----------------------------------------------


def _inspected(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data[0] if isinstance(data, list) else data


def config(dockerfile: Path, inspect: Path) -> None:
    spec, image = declared(dockerfile), _inspected(inspect)
    found = image.get("Config") or {}
    print(f"declared by {dockerfile.name}, found in the image:")
    expect(
        found.get("User", "") == spec.get("user", ""),
        f"USER {found.get('User')}",
        f"the Dockerfile declares USER {spec.get('user')}, the image has {found.get('User')!r}",
    )
    env = dict(item.partition("=")[::2] for item in found.get("Env") or [])
    for key, value in spec["env"].items():
        expect(
            env.get(key) == value,
            f"ENV {key}={value}",
            f"the Dockerfile declares ENV {key}={value}, the image has {env.get(key)!r}",
        )
    expect(
        found.get("WorkingDir", "") == spec.get("workdir", ""),
        f"WORKDIR {found.get('WorkingDir')}",
        f"the Dockerfile declares WORKDIR {spec.get('workdir')}, "
        f"the image has {found.get('WorkingDir')!r}",
    )
    volumes = sorted(found.get("Volumes") or {})
    expect(
        volumes == sorted(spec["volumes"]),
        f"VOLUME {volumes}",
        f"the Dockerfile declares VOLUME {sorted(spec['volumes'])}, the image has {volumes}",
    )
    ports = sorted(found.get("ExposedPorts") or {})
    expect(
        ports == sorted(spec["expose"]),
        f"EXPOSE {ports}",
        f"the Dockerfile declares EXPOSE {sorted(spec['expose'])}, the image has {ports}",
    )
    for key in ("entrypoint", "cmd"):
        have = found.get(key.capitalize() if key == "cmd" else "Entrypoint")
        expect(
            have == spec.get(key),
            f"{key.upper()} {have}",
            f"the Dockerfile declares {key.upper()} {spec.get(key)}, the image has {have}",
        )
    check = image.get("Healthcheck") or found.get("Healthcheck")
    want = spec.get("healthcheck")
    same = bool(check) == bool(want) and all(check.get(k) == v for k, v in (want or {}).items())
    expect(
        same,
        f"HEALTHCHECK {check}",
        f"the Dockerfile declares HEALTHCHECK {want}, the image has {check}",
    )
    print("what followupd requires of its image:")
    problems = requirements(spec)
    for problem in problems:
        fail(problem)
    if not problems:
        ok(
            "a non-root USER, FOLLOWUPD_HOME a VOLUME and the WORKDIR, the health check, "
            "ENTRYPOINT and CMD, no dev extra"
        )


# --- running the image's own file system ----------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _user(image_root: Path, user: str) -> tuple[int, int]:
    """The image's USER as numbers, resolved in the image's own /etc/passwd and /etc/group."""
    name, _, group = user.partition(":")
    passwd = [line.split(":") for line in (image_root / "etc/passwd").read_text().splitlines()]
    groups = [line.split(":") for line in (image_root / "etc/group").read_text().splitlines()]
    if name in ROOT_USERS:
        uid, gid = 0, 0
    elif name.isdigit():
        uid = int(name)
        gid = next((int(p[3]) for p in passwd if p[2] == name), uid)
    else:
        entry = next(p for p in passwd if p[0] == name)
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        gid = int(group) if group.isdigit() else int(next(g for g in groups if g[0] == group)[2])
    return uid, gid


class Image:
    """The image's file system, read-only, with a fresh volume per 'container'."""

    def __init__(self, inspect: Path, image_dir: Path, work: Path) -> None:
        self.image = _inspected(inspect)
        cfg = self.image["Config"]
        self.source = image_dir
        self.root = work / "root"
        self.root.mkdir()
        self.workdir = cfg.get("WorkingDir") or "/"
        self.volumes = sorted(cfg.get("Volumes") or {})
        self.entrypoint = cfg.get("Entrypoint") or []
        self.cmd = cfg.get("Cmd") or []
        self.check = self.image.get("Healthcheck") or cfg.get("Healthcheck")
        self.uid, self.gid = _user(image_dir, cfg.get("User", ""))
        self.env = dict(item.partition("=")[::2] for item in cfg.get("Env") or [])
        if "HOME" not in self.env:  # as Docker and Podman do: the user's home from passwd
            passwd = (image_dir / "etc/passwd").read_text().splitlines()
            homes = [p.split(":")[5] for p in passwd if p.split(":")[2] == str(self.uid)]
            self.env["HOME"] = homes[0] if homes else "/"
        self.work = work
        self.volume: Path | None = None
        self.unshare, self.nsenter = shutil.which("unshare"), shutil.which("nsenter")

    def prepare(self) -> None:
        _mount("--bind", str(self.source), str(self.root))
        _mount("-o", "remount,bind,ro", str(self.root))
        try:
            (self.root / ".followupd-ci-probe").touch()
        except OSError as exc:
            ok(
                f"the image's file system is mounted read-only ({exc.strerror}): "
                "nothing can be written outside the volume"
            )
        else:
            fail("the image's file system is writable: the no-write check would prove nothing")
        dev = self.root / "dev"
        _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,noexec,size=1m", "tmpfs", str(dev))
        for node in ("null", "zero", "full", "random", "urandom", "tty"):
            (dev / node).touch()
            _mount("--bind", f"/dev/{node}", str(dev / node))
        (dev / "shm").mkdir()
        _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev,size=16m", "tmpfs", str(dev / "shm"))

    def new_volume(self, label: str) -> Path:
        """A fresh volume on the image's VOLUME, owned and moded as the image's folder is
        (what Docker does for a new named volume)."""
        if self.volume is not None:
            subprocess.run(["umount", str(self.root / self.volume_path.lstrip("/"))], check=True)
        image_dir = self.source / self.volume_path.lstrip("/")
        info = image_dir.stat()
        volume = Path(tempfile.mkdtemp(prefix=f"volume-{label}-", dir=self.work))
        os.chown(volume, info.st_uid, info.st_gid)
        volume.chmod(stat.S_IMODE(info.st_mode))
        _mount("--bind", str(volume), str(self.root / self.volume_path.lstrip("/")))
        self.volume = volume
        return volume

    @property
    def volume_path(self) -> str:
        return self.env.get(HOME_VARIABLE) or (self.volumes or ["/data"])[0]

    def command(self, args: list[str]) -> list[str]:
        """`docker run --rm IMAGE args`: own PID namespace and /proc, the image's root, its
        WORKDIR, its user (no other groups) and, by the caller, its Env alone."""
        return [
            self.unshare, "--pid", "--fork", "--kill-child",
            f"--mount-proc={self.root}/proc",
            self.nsenter, f"--root={self.root}", f"--wd={self.root}{self.workdir}",
            "-S", str(self.uid), "-G", str(self.gid), "--", *args,
        ]  # fmt: skip

    def exec_in(self, pid: int, args: list[str]) -> list[str]:
        """`docker exec`: into the running container's PID and mount namespaces, root and cwd."""
        return [
            self.nsenter, "-t", str(pid), "-p", "-m", "-r", "-w",
            "-S", str(self.uid), "-G", str(self.gid), "--", *args,
        ]  # fmt: skip

    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        shown = " ".join(args)
        try:
            done = subprocess.run(
                self.command(args), env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            fail(f"`{shown}` did not finish within {timeout:.0f} s")
            raise
        print(f"  $ {shown}  -> exit {done.returncode}")
        return done


def _show(text: str, limit: int = 12) -> None:
    lines = text.strip().splitlines()
    for line in lines[-limit:]:
        print(f"    | {line}")


def _private(volume: Path, uid: int, what: str) -> None:
    """Everything under the volume is the user's and private: files 0600, folders 0700."""
    wrong = []
    count = 0
    for path in [volume, *volume.rglob("*")]:
        info = path.lstat()
        count += 1
        mode = stat.S_IMODE(info.st_mode)
        want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if info.st_uid != uid or mode != want:
            wrong.append(f"{path.relative_to(volume)} (uid {info.st_uid}, mode {mode:04o})")
    expect(
        not wrong and count > 1,
        f"{what}: {count} files and folders in the volume, all uid {uid}, files 0600, folders 0700",
        f"{what}: not private to uid {uid} with 0600/0700: {', '.join(wrong[:8]) or 'empty'}",
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _ids(pid: int) -> tuple[list[int], list[int]]:
    status = (Path("/proc") / str(pid) / "status").read_text()
    uids = [int(x) for x in re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()]
    gids = [int(x) for x in re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()]
    return uids, gids


def _health_command(check: dict) -> list[str]:
    test = check["Test"]
    if test[0] == "CMD":
        return test[1:]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    raise ValueError(f"a health check test of kind {test[0]}")


def run_checks(inspect: Path, image_dir: Path, work: Path) -> None:  # noqa: C901 -- one story
    image = Image(inspect, image_dir, work)
    print(
        f"as the image's user {image.uid}:{image.gid}, in {image.workdir}, with the image's "
        f"Env ({', '.join(sorted(image.env))}), on a fresh volume at {image.volume_path}:"
    )
    expect(image.uid != 0, f"the user is not root (uid {image.uid})", "the image runs as root")
    expect(
        image.volume_path in image.volumes,
        f"{HOME_VARIABLE}={image.volume_path} is the image's VOLUME",
        f"{HOME_VARIABLE}={image.volume_path} is not a VOLUME of the image ({image.volumes})",
    )
    folder = image_dir / image.volume_path.lstrip("/")
    if folder.is_dir():
        info = folder.stat()
        mode = stat.S_IMODE(info.st_mode)
        expect(
            (info.st_uid, info.st_gid, mode) == (image.uid, image.gid, 0o700),
            f"the image's {image.volume_path} is 0700 and owned by {image.uid}:{image.gid}",
            f"the image's {image.volume_path} is {mode:04o} owned by "
            f"{info.st_uid}:{info.st_gid}, not 0700 owned by {image.uid}:{image.gid}",
        )
    else:
        fail(f"the image has no folder {image.volume_path}")
        return
    image.prepare()
    entry = image.entrypoint

    # `docker run --rm -v fresh:/data IMAGE demo`
    volume = image.new_volume("demo")
    done = image.run([*entry, "demo"])
    if not expect(done.returncode == 0, "demo exits 0", "demo failed"):
        _show(done.stdout + done.stderr)
    homes = [p for p in volume.iterdir() if (p / "followupd.yaml").exists()]
    drafts = list(volume.rglob("outbox/drafts/*.eml"))
    expect(
        bool(homes) and bool(drafts),
        f"demo wrote its home in the volume ({image.volume_path}/{homes[0].name if homes else ''}"
        f", {len(drafts)} drafts)",
        f"demo wrote no home with drafts in the volume (found: {sorted(os.listdir(volume))})",
    )
    _private(volume, image.uid, "demo")

    listing = image.run(["pip", "list", "--format=json"])
    (work / "pip-list.json").write_text(listing.stdout if listing.returncode == 0 else "[]")
    expect(listing.returncode == 0, "pip list runs in the image", "pip list failed in the image")

    # A new volume: `check` before `init`, `init /data`, `check` again.
    volume = image.new_volume("daemon")
    done = image.run([*entry, "check"])
    expect(
        done.returncode == 2 and "followupd init" in done.stdout + done.stderr,
        "check on an empty volume exits 2 and names `followupd init` (configuration first)",
        f"check on an empty volume: exit {done.returncode}, expected 2 naming `followupd init`",
    )
    _show(done.stdout + done.stderr, 3)
    done = image.run([*entry, "init", image.volume_path])
    expect(done.returncode == 0, "init writes a configuration in the volume", "init failed")
    if done.returncode:
        _show(done.stdout + done.stderr)
    done = image.run([*entry, "check"])
    if not expect(done.returncode == 0, "check exits 0 after init", "check after init failed"):
        _show(done.stdout + done.stderr)

    if not image.check:
        fail("the image has no health check to run")
        return
    health = _health_command(image.check)
    timeout = image.check.get("Timeout", 30 * 10**9) / 10**9
    start_period = image.check.get("StartPeriod", 0) / 10**9 or 60.0
    done = image.run(health, timeout=timeout)
    expect(
        done.returncode == 1,
        f"`{' '.join(health)}` exits 1 before any daemon ticked",
        f"`{' '.join(health)}` exits {done.returncode} with no daemon: it cannot tell",
    )

    # `docker run -d -v that:/data IMAGE` (the default command), then its health check.
    command = [*entry, *image.cmd]
    daemon = subprocess.Popen(
        image.command(command),
        env=image.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    print(f"  $ {' '.join(command)}  (PID 1 of its own PID namespace)")
    try:
        pid = 0
        for _ in range(100):
            kids = _children(daemon.pid)
            if kids:
                pid = kids[0]
                break
            time.sleep(0.05)
        if not pid:
            fail("the daemon did not start")
            return
        time.sleep(0.5)
        uids, gids = _ids(pid)
        expect(
            set(uids) == {image.uid} and set(gids) == {image.gid},
            f"the daemon runs as {image.uid}:{image.gid} (real, effective, saved, fs)",
            f"the daemon runs as uids {uids}, gids {gids}, not {image.uid}:{image.gid}",
        )
        started, healthy, last = time.monotonic(), None, None
        while time.monotonic() - started < start_period and daemon.poll() is None:
            try:
                last = subprocess.run(
                    image.exec_in(pid, health),
                    env=image.env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                last = None
            if last is not None and last.returncode == 0:
                healthy = time.monotonic() - started
                break
            time.sleep(1)
        if (
            not expect(
                healthy is not None,
                f"the HEALTHCHECK `{' '.join(health)}`, run in the container, exits 0 "
                f"{healthy or 0:.1f} s after start (start period {start_period:.0f} s, "
                f"timeout {timeout:.0f} s)",
                f"the HEALTHCHECK `{' '.join(health)}` did not pass within the start period "
                f"({start_period:.0f} s)",
            )
            and last is not None
        ):
            _show(last.stdout + last.stderr)
    finally:
        # `docker stop`: SIGTERM to PID 1, a bounded wait, then SIGKILL.
        stopping = time.monotonic()
        for target in _children(daemon.pid) or [daemon.pid]:
            os.kill(target, signal.SIGTERM)
        try:
            _, err = daemon.communicate(timeout=STOP_WAIT)
            took = time.monotonic() - stopping
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
            took = None
    expect(
        took is not None and daemon.returncode == 0 and "event=stopped" in err,
        f"run stops on SIGTERM with exit 0 in {took or 0:.1f} s (allowed {STOP_WAIT:.0f} s)",
        f"run on SIGTERM: exit {daemon.returncode}"
        + (f" after {took:.1f} s" if took is not None else f", still running after {STOP_WAIT} s")
        + ", expected exit 0 with event=stopped",
    )
    if FAILED:
        _show(err, 20)
    _private(volume, image.uid, "init, check, run and health")


# --- packages -------------------------------------------------------------------------------


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement)[1]).lower()


DEV_TOOLS = {"coverage", "mypy", "black", "flake8", "pylint", "tox", "nox", "pre-commit",
             "ipython", "ipdb", "pytest"}  # fmt: skip


def packages(pyproject: Path, listing: Path) -> None:
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    wanted = {_name(r) for r in project.get("dependencies", [])}
    for extra, listed in extras.items():
        if extra != "dev":
            wanted |= {_name(r) for r in listed}
    dev = {_name(r) for r in extras.get("dev", [])} - wanted
    installed = {_name(p["name"]): p["version"] for p in json.loads(listing.read_text())}
    print(f"the image's Python packages ({len(installed)}):")
    names = sorted(installed)
    width = max(len(n) for n in names) + 1 if names else 0
    for i in range(0, len(names), 3):
        print("  " + "".join(f"{n:<{width}} {installed[n]:<14}" for n in names[i : i + 3]))
    present = sorted(
        n for n in installed if n in dev or n in DEV_TOOLS or n.startswith(("pytest-", "hadolint"))
    )
    expect(
        not present and "followupd" in installed,
        f"followupd {installed.get('followupd')}, and none of the test and development "
        f"packages ({', '.join(sorted(dev | DEV_TOOLS))}, pytest-*, hadolint*)",
        f"test or development packages in the image: {', '.join(present)}"
        if present
        else "followupd is not installed in the image",
    )


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "declared":
        print(json.dumps(declared(Path(args[0] if args else "Dockerfile")), indent=1))
    elif command == "mounts":
        print("\n".join(mounts()))
    elif command == "config":
        config(Path(args[0]), Path(args[1]))
    elif command == "leftovers":
        leftovers(Path(args[0]), Path(args[1]))
    elif command == "run":
        run_checks(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "packages":
        packages(Path(args[0]), Path(args[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
