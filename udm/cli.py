"""Console scripts: thin @hydra.main wrappers around the importable jobs in udm.jobs."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from udm.errors import UdmError

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # shipped inside the package, so a wheel works


DEBUG = "UDM_DEBUG"  # UDM_DEBUG=1: input problems raise with their full traceback instead of one message
USER_OS_ERRORS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                  errno.ENOENT, errno.EDQUOT}  # the disk, the permissions or a path the user gave: not a bug of udm


def message(e: BaseException) -> str:
    """One line (or a few) for the user: Hydra's wrapper of an error raised while building a component is
    replaced by that error, with the config key it came from."""
    if isinstance(e, InstantiationException) and isinstance(e.__cause__, (UdmError, ValueError, TypeError)):
        key = getattr(e, "full_key", None) or ""
        return f"{key + ': ' if key else ''}{e.__cause__}"
    if isinstance(e, OmegaConfBaseException):
        return str(e).splitlines()[0] + (f" (key {e.full_key})" if getattr(e, "full_key", None) else "")
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}" + (" (the disk is full; the last checkpoint stays whole)" if e.errno == errno.ENOSPC else "")
    return str(e)


def report_errors(job, cfg: DictConfig, script: str | None = None):
    """Run a job after checking its settings (udm.jobs.settings); input problems end in one message on stderr and
    exit code 2, not a traceback (UDM_DEBUG=1 shows the traceback)."""
    from udm.console import quiet_libraries
    from udm.jobs.settings import check_script

    quiet_libraries()
    try:
        if script:
            check_script(cfg, script)
        return job(cfg)
    except (UdmError, InstantiationException, ValueError, OmegaConfBaseException, OSError) as e:
        if os.environ.get(DEBUG) or (isinstance(e, OSError) and e.errno not in USER_OS_ERRORS):
            raise
        print(f"error: {message(e)}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_main(cfg: DictConfig) -> None:
    from udm.jobs.train import train

    result = report_errors(train, cfg, "train")
    if result.get("stopped"):  # by SIGTERM / Ctrl-C, after saving: exit as the signal would
        sys.exit(128 + result["stopped"])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def sample_main(cfg: DictConfig) -> None:
    from udm.jobs.sample import sample_images

    report_errors(sample_images, cfg, "sample")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _generate(cfg: DictConfig) -> None:
    from udm.jobs.generate import generate_text

    report_errors(generate_text, cfg, "generate")


TEXT_KEYS = ("author", "label", "title", "template")  # udm-generate's values in the user's own words


def with_quoted_text(args: list[str], keys: tuple[str, ...] = TEXT_KEYS) -> list[str]:
    """key=value for the text keys with the value quoted, so author=杜甫 reads as Hydra reads author='杜甫'
    (its grammar takes unquoted values in ASCII only); values the user already quoted, null, and sweeps
    (-m author=白居易,羅隱: the user quotes each name) pass unchanged."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key in keys and value and value[0] not in "'\"" and "," not in value and value != "null":
            body = value.replace("'", "\\'")  # Hydra reads a backslash as an escape only before a quote or at the end
            arg = f"{key}='" + body + "\\" * (len(body) - len(body.rstrip("\\"))) + "'"
        out.append(arg)
    return out


def generate_main() -> None:
    """udm-generate: text values (author=杜甫, title=春望, template=...) need no quotes on the command line."""
    sys.argv[1:] = with_quoted_text(sys.argv[1:])
    _generate()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="features")
def features_main(cfg: DictConfig) -> None:
    from udm.jobs.features import features

    report_errors(features, cfg, "features")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    from udm.jobs.evaluate import evaluate

    report_errors(evaluate, cfg, "eval")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def export_main(cfg: DictConfig) -> None:
    from udm.jobs.export import export

    report_errors(export, cfg, "export")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def _compare(cfg: DictConfig) -> None:
    from udm.jobs.compare import compare

    report_errors(compare, cfg, "compare")


HYDRA_VALUE_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-c", "--cfg", "-p", "--package", "--info")


def with_dir_override(args: list[str]) -> list[str]:
    """A bare folder argument becomes dir='FOLDER' (quoted: sweep folders hold '=' and ',')."""
    out = []
    for i, arg in enumerate(args):
        bare = not arg.startswith("-") and ("=" not in arg or Path(arg).expanduser().is_dir())
        if bare and not (i and args[i - 1] in HYDRA_VALUE_FLAGS):
            arg = "dir='" + arg.replace("'", "\\'") + "'"
        out.append(arg)
    return out


def compare_main() -> None:
    """udm-compare DIR [out_dir=...]: Hydra takes only key=value, so the folder is passed on as dir=DIR."""
    sys.argv[1:] = with_dir_override(sys.argv[1:])
    _compare()
