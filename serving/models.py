"""Which versions are loaded, and which one answers a request.

The local servers' stand-in for TF Serving's `ServerCore` (server_core.cc)
and its aspired-versions manager, shared by REST and gRPC:

- `ModelManager`: one model under `base_path`, whose integer version
  directories are polled. The version policy (`model_version_policy`: latest
  {num_versions} (default 1), specific {versions}, all) picks the versions to
  keep loaded. A new version is loaded, warmed up (`serving.warmup`) and only
  then made AVAILABLE; versions leaving the policy are unloaded after that,
  and never while no aspired version is AVAILABLE (TF Serving's
  availability-preserving policy), so a version that fails to load leaves
  the old one serving. A failed version is END with its error, and is
  retried only once a file in its directory changes.
- Version labels (`version_labels` in models.config) map a label to a
  version. A label must point at an AVAILABLE version when the config is
  applied (else FAILED_PRECONDITION "Request to assign label to version N of
  model M, which is not currently available for inference"), unless
  `allow_version_labels_for_unavailable_models`; an unknown label is
  INVALID_ARGUMENT "Unrecognized servable version label: L".
- `ServerCore`: the models by name; `get(name, version, label)` is
  `GetServableHandle` (NOT_FOUND "Servable not found for request:
  Latest(m)" / "Specific(m, v)"), `status(name, version)` is
  `GetModelStatusImpl` (every version the manager has seen, newest first,
  with its state; NOT_FOUND "Could not find any versions of model m" /
  "Could not find version v of model m").
"""

import logging
import os
import re
import threading

from . import warmup
from .servable import LoadedVersion
from .status import ServingError, clean_message

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 1.0

# A version directory's name: ASCII digits that fit an int64. TF Serving parses
# names with absl::SimpleAtoi (file_system_storage_path_source.cc
# ParseVersionNumber), which takes ASCII digits only; str.isdigit() would also
# take "²" (int() then raises) and "٥" (int() reads 5).
_VERSION_NAME = re.compile(r"[0-9]{1,19}")
MAX_VERSION = (1 << 63) - 1


def version_number(name):
    """The version a directory name stands for, or None if it is not one."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def version_dirs(model_dir):
    """{version: directory name} of the version directories under `model_dir`
    (TF Serving ignores other names); "7" wins over "007"."""
    try:
        names = sorted(os.listdir(model_dir), key=lambda name: (len(name), name))
    except OSError:
        return {}
    dirs = {}
    for name in names:
        number = version_number(name)
        if number is not None and number not in dirs:
            if os.path.isdir(os.path.join(model_dir, name)):
                dirs[number] = name
    return dirs


def available_versions(model_dir):
    """Integer version directories under `model_dir` (TF Serving ignores others)."""
    return sorted(version_dirs(model_dir))


class VersionPolicy:
    """`ServableVersionPolicy`: which of the versions on disk to keep loaded.

    Args:
        kind: "latest", "specific" or "all".
        num_versions: for "latest" (at least 1).
        versions: for "specific".
    """

    def __init__(self, kind="latest", num_versions=1, versions=()):
        if kind not in ("latest", "specific", "all"):
            raise ValueError(f"Unknown version policy {kind!r}.")
        self.kind = kind
        self.num_versions = max(1, int(num_versions or 1))
        self.versions = frozenset(int(v) for v in versions)

    @classmethod
    def from_proto(cls, proto):
        """From a `FileSystemStoragePathSourceConfig.ServableVersionPolicy`."""
        kind = proto.WhichOneof("policy_choice")
        if kind == "specific":
            return cls("specific", versions=proto.specific.versions)
        if kind == "all":
            return cls("all")
        num_versions = proto.latest.num_versions if kind == "latest" else 1
        return cls("latest", num_versions=num_versions)

    def aspired(self, versions):
        """The subset of `versions` (sorted ints) to keep loaded."""
        if self.kind == "all":
            return set(versions)
        if self.kind == "specific":
            return set(versions) & self.versions
        return set(versions[-self.num_versions :])


class ModelManager:
    """The loaded versions of one model, their states and labels.

    Args:
        name: the model name.
        base_path: the directory of its integer version directories.
        policy: a `VersionPolicy` (default: the latest version).
        labels: {label: version}.
        enable_warmup: replay `assets.extra/tf_serving_warmup_requests`
            before a version becomes AVAILABLE.
        allow_labels_for_unavailable: accept labels of versions that are not
            AVAILABLE (TF Serving's
            `--allow_version_labels_for_unavailable_models`).
        signature_method_name_check: Classify (warmup records too) needs the
            classify method name (`--enable_signature_method_name_check`).
    """

    def __init__(
        self,
        name,
        base_path,
        policy=None,
        labels=None,
        enable_warmup=True,
        allow_labels_for_unavailable=False,
        signature_method_name_check=False,
    ):
        self.name = name
        self.base_path = base_path
        self.policy = policy or VersionPolicy()
        self.enable_warmup = enable_warmup
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.signature_method_name_check = signature_method_name_check
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._loaded = {}  # version -> LoadedVersion (AVAILABLE)
        # version -> (state, error_code, error_message), as ServableStateMonitor.
        self._states = {}
        self._labels = {}
        self._failed_at = {}  # version -> its files' fingerprint when it failed
        self._dirs = {}  # version -> its directory's name ("7", or "007")
        self.reload()
        if not self._loaded:
            failed = [v for v, (_, code, _) in self._states.items() if code != "OK"]
            raise FileNotFoundError(
                f"Model {name}: no version could be loaded from {base_path} "
                f"(failed versions: {sorted(failed)})."
            )
        self.set_labels(labels or {})

    # --- Loading ----------------------------------------------------------------

    def _set_state(self, version, state, code="OK", message=""):
        with self._lock:
            self._states[version] = (state, code, message)

    def _load(self, version):
        """Loads and warms up one version; True when it is AVAILABLE."""
        self._set_state(version, "LOADING")
        export_dir = os.path.join(self.base_path, self._dir(version))
        try:
            loaded = LoadedVersion(export_dir, version)
            if self.enable_warmup:
                count = warmup.run_warmup(
                    loaded,
                    signature_method_name_check=self.signature_method_name_check,
                )
                logger.info("%s %d: %d warmup records.", self.name, version, count)
        except ServingError as error:
            failure = (error.code, clean_message(error.message))
        except Exception as error:  # A broken SavedModel, a missing op, ...
            failure = ("UNKNOWN", clean_message(f"{type(error).__name__}: {error}"))
        else:
            with self._lock:
                self._loaded[version] = loaded
                self._states[version] = ("AVAILABLE", "OK", "")
            logger.info("Serving %s version %d.", self.name, version)
            return True
        logger.error("Could not load %s version %d: %s", self.name, version, failure)
        self._set_state(version, "END", *failure)
        self._failed_at[version] = self._fingerprint(version)
        return False

    def _dir(self, version):
        return self._dirs.get(version, str(version))

    def _fingerprint(self, version):
        """(path, size, mtime) of every file under the version's directory."""
        root = os.path.join(self.base_path, self._dir(version))
        files = []
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:  # removed while we walk: a change
                    continue
                files.append((path, stat.st_size, stat.st_mtime_ns))
        return sorted(files)

    def reload(self):
        """Loads newly aspired versions, then unloads the ones no longer aspired.

        Returns:
            True if the set of loaded versions changed.
        """
        with self._reload_lock:
            self._dirs = version_dirs(self.base_path)
            aspired = self.policy.aspired(sorted(self._dirs))
            with self._lock:
                loaded = set(self._loaded)
                failed = {
                    v
                    for v, s in self._states.items()
                    if s[1] != "OK" and self._failed_at.get(v) == self._fingerprint(v)
                }
            changed = False
            for version in sorted(aspired - loaded - failed, reverse=True):
                changed |= self._load(version)
            with self._lock:
                # Availability preserving: unload only once an aspired version
                # serves, so that requests never find the model empty.
                if not aspired & set(self._loaded):
                    return changed
                for version in sorted(set(self._loaded) - aspired):
                    del self._loaded[version]
                    self._states[version] = ("END", "OK", "")
                    logger.info("Unloaded %s version %d.", self.name, version)
                    changed = True
            return changed

    # --- Labels -------------------------------------------------------------------

    def check_labels(self, labels):
        """FAILED_PRECONDITION if a label points at a version not AVAILABLE."""
        if self.allow_labels_for_unavailable:
            return
        with self._lock:
            loaded = set(self._loaded)
        for version in sorted(int(v) for v in labels.values()):
            if version not in loaded:
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Request to assign label to version {version} of model "
                    f"{self.name}, which is not currently available for inference",
                )

    def set_labels(self, labels):
        """Replaces the label map, after `check_labels`."""
        self.check_labels(labels)
        with self._lock:
            self._labels = {str(k): int(v) for k, v in labels.items()}

    def version_for_label(self, label):
        with self._lock:
            if label not in self._labels:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Unrecognized servable version label: {label}"
                )
            return self._labels[label]

    # --- Requests -----------------------------------------------------------------

    def get(self, version=None):
        """The AVAILABLE version asked for (the highest when `version` is None)."""
        with self._lock:
            if version is None:
                if self._loaded:
                    return self._loaded[max(self._loaded)]
                spec = f"Latest({self.name})"
            else:
                if int(version) in self._loaded:
                    return self._loaded[int(version)]
                spec = f"Specific({self.name}, {version})"
        raise ServingError("NOT_FOUND", f"Servable not found for request: {spec}")

    def status(self, version=None):
        """[(version, state, error_code, error_message)], newest first."""
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if int(version) not in states:
                raise ServingError(
                    "NOT_FOUND",
                    f"Could not find version {version} of model {self.name}",
                )
            states = {int(version): states[int(version)]}
        return [(v, *states[v]) for v in sorted(states, reverse=True)]


class ServerCore:
    """The served models by name, and the threads that poll for changes.

    Args:
        managers: `ModelManager`s (names must differ).
        poll_s: seconds between version polls (TF Serving's
            `--file_system_poll_wait_seconds`); 0 or None: no polling.
        config_reload: a callable that re-applies the config file when it
            changed, run every `config_poll_s` seconds (TF Serving's
            `--model_config_file_poll_wait_seconds`; 0: never).
    """

    def __init__(self, managers, poll_s=DEFAULT_POLL_S, config_reload=None,
                 config_poll_s=0):  # fmt: skip
        self.models = {}
        for manager in managers:
            if manager.name in self.models:
                raise ValueError(
                    f"Illegal to list model {manager.name} multiple times in config "
                    "list"
                )
            self.models[manager.name] = manager
        self.poll_s = poll_s
        self.config_reload = config_reload
        self.config_poll_s = config_poll_s
        self._stop = threading.Event()
        self._threads = []

    @property
    def signature_method_name_check(self):
        """Whether Classify checks method names (the managers' option)."""
        return any(m.signature_method_name_check for m in self.models.values())

    def start_polling(self):
        if self._threads:
            return
        tasks = [("version-poll", self.poll_s, self._reload_versions)]
        if self.config_reload is not None:
            tasks.append(("config-poll", self.config_poll_s, self.config_reload))
        for name, seconds, task in tasks:
            if seconds:
                thread = threading.Thread(
                    target=self._poll, args=(seconds, task), name=name, daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _reload_versions(self):
        for manager in list(self.models.values()):
            try:
                manager.reload()
            except Exception:  # Keep polling; the old versions still serve.
                logger.exception("Polling %s failed.", manager.name)

    def _poll(self, seconds, task):
        # Like TF Serving, retry at every poll (a refused config may become
        # valid once a version loads), but report each failure once.
        reported = None
        while not self._stop.wait(seconds):
            try:
                task()
                reported = None
            except Exception as error:
                if repr(error) != reported:
                    logger.exception("Polling failed; retrying every %s s.", seconds)
                    reported = repr(error)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _manager(self, name, version=None):
        if name not in self.models:
            spec = f"Latest({name})" if version is None else None
            spec = spec or f"Specific({name}, {version})"
            raise ServingError("NOT_FOUND", f"Servable not found for request: {spec}")
        return self.models[name]

    def get(self, name, version=None, label=None):
        """The `LoadedVersion` for a request's model spec (GetServableHandle)."""
        if version is not None and label is not None:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Both model version ({version}) and model version label ({label}) "
                "cannot be supplied.",
            )
        if label is not None:
            if name not in self.models:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Unrecognized servable version label: {label}"
                )
            version = self.models[name].version_for_label(label)
        return self._manager(name, version).get(version)

    def status(self, name, version=None):
        """GetModelStatus: [(version, state, code, message)], newest first.

        A label is not resolved here: TF Serving's `GetModelStatusImpl` only
        looks at `model_spec.version`, so `/labels/L` lists every version.
        """
        if name not in self.models:
            raise ServingError(
                "NOT_FOUND", f"Could not find any versions of model {name}"
            )
        return self.models[name].status(version)
