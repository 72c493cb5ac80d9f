"""`adapt finetune --push-to-hub REPO`: the finished run folder (weights, config, tokenizer, model card, metrics,
plots, TensorBoard logs) uploaded to a Hugging Face Hub model repository with `huggingface_hub`. The Hub is
checked (reachable, logged in, valid repository id) before training starts, so an offline machine fails in one
line before any work instead of after it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adapt.errors import AdaptError

REACH_TIMEOUT_S = 5.0
# not uploaded: resumable training state (optimizer moments, RNG), other trackers' local stores, hidden files
# (the run lock, swap markers)
IGNORE_PATTERNS = ["checkpoints/**", "mlruns/**", "wandb/**", ".*", "**/.*"]


@dataclass(frozen=True)
class PushTarget:
    """A checked upload target: the repository id, the Hub endpoint and the account the token belongs to."""

    repo_id: str
    endpoint: str
    user: str


def unreachable_reason(timeout: float = REACH_TIMEOUT_S) -> str | None:
    """None when the Hugging Face Hub endpoint (`constants.ENDPOINT`: HF_ENDPOINT or huggingface.co) answers one
    HEAD request within `timeout` seconds, sent through huggingface_hub's own HTTP session (so its proxy
    settings, HTTPS_PROXY included, apply); else the first line of the transport error (refused, DNS, timeout,
    proxy). HF_HUB_OFFLINE is not looked at: each caller says what it means for its command."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=True)
    except Exception as err:  # any transport error means the same to the user: not reachable
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def check_push_target(repo_id: str) -> PushTarget:
    """Check, before training, that `repo_id` can be pushed to: a valid repository id, the Hub not switched
    off (HF_HUB_OFFLINE), the endpoint reachable (one HEAD request, `REACH_TIMEOUT_S` seconds), and a token that
    the Hub accepts (`HfApi.whoami`). Nothing is written.

    Raises:
        AdaptError: one line naming --push-to-hub, what failed and the fix."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalTokenNotFoundError
    from huggingface_hub.utils import validate_repo_id

    where = f"--push-to-hub {repo_id}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise AdaptError(f"{where}: not a repository id ({str(err).splitlines()[0]}); give NAME or USER/NAME, "
                         "e.g. my-user/sentiment-minilm") from None
    if constants.HF_HUB_OFFLINE:
        raise AdaptError(f"{where}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or drop --push-to-hub")
    endpoint = constants.ENDPOINT
    reason = unreachable_reason()
    if reason:
        raise AdaptError(f"{where}: the Hugging Face Hub at {endpoint} is unreachable ({reason}); connect to the "
                         "network (or fix HF_ENDPOINT), or drop --push-to-hub and upload the run folder later "
                         "with `hf upload`")
    try:
        user = HfApi(endpoint=endpoint).whoami()
    except LocalTokenNotFoundError:
        raise AdaptError(f"{where}: not logged in to the Hugging Face Hub; run `hf auth login` or set HF_TOKEN to a "
                         "token with write access") from None
    except HfHubHTTPError as err:
        raise AdaptError(f"{where}: the Hub refused the token ({str(err).splitlines()[0]}); run `hf auth login` "
                         "or set HF_TOKEN to a token with write access") from None
    except Exception as err:
        raise AdaptError(f"{where}: cannot reach the Hub at {endpoint} ({type(err).__name__}: {err}); connect to "
                         "the network, or drop --push-to-hub") from None
    return PushTarget(repo_id, endpoint, str(user.get("name", "")))


def push_run(target: PushTarget, run_dir: Path, private: bool | None = None) -> str:
    """Create the model repository if needed (`HfApi.create_repo`, exist_ok) and upload the finished run folder
    (`HfApi.upload_folder`), its model card README.md included, leaving out `IGNORE_PATTERNS`. Only the main
    process of a multi-process run uploads. Returns the repository URL.

    Raises:
        AdaptError: the upload failed; the message says the run is saved and how to upload it by hand."""
    if int(os.environ.get("RANK", "0")) != 0:
        return ""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=target.endpoint)
    try:
        url = api.create_repo(target.repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=target.repo_id, repo_type="model", folder_path=str(run_dir),
                          ignore_patterns=IGNORE_PATTERNS, commit_message=f"adapt finetune: {run_dir.name}")
    except Exception as err:
        raise AdaptError(f"--push-to-hub {target.repo_id}: the upload failed ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); the run is saved in {run_dir}: upload it "
                         f"with `hf upload {target.repo_id} {run_dir}`") from None
    return str(url)
