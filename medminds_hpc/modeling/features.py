"""The feature cache of the two frozen experts: each expert's final hidden state at the last real prompt token.

Ensemble heads over frozen experts need, per question, only what each expert's LM head sees at the answer
position. Computing it once per split and training every head from disk costs one inference pass per expert
instead of one per epoch per head, and keeps rows x hidden floats instead of rows x 32,000 logits (the frozen LM
head is applied on the fly: `lm_head_logits`, `letter_logits`).

    model, tok = load_experts({"task": task_run, "domain": domain_run})     # ONE base, two named adapters
    spec = cache_spec({"task": task_run, "domain": domain_run}, rows, split="validation")
    extract(cache_dir, spec, rows, model, tok)                              # writes missing or stale shards only
    feats = load(cache_dir, spec)                                           # None: missing, stale or partial
    feats.states["task"], feats.states["domain"], feats.ids                 # float32 (rows, hidden) each

`ensure(...)` does all of it in one call, loading the model only when something must be computed.

On disk (`artifacts.path(run, artifacts.FEATURES)`): `shard-00000.safetensors`, ... each holding one float32
tensor per expert (rows_per_shard x hidden) and the row ids (in its metadata), and `manifest.json` recording what
the cache was computed from (each expert's run, model and adapter sha256, split, prompt template, max_length,
dtype, rows and their ids' sha256, rows per shard) and each finished shard's row range and sha256. Every file is
written atomically; a shard counts only once the manifest holds its sha256.

Staleness: `load` returns None (never stale data) when the manifest differs in any field from the spec asked
for, or a shard is missing, truncated or has another sha256; the caller then runs `extract`, which keeps the
shards that are still valid and recomputes the rest (a changed spec discards them all). A preempted extraction
therefore continues at the next shard and ends with files byte-identical to an uninterrupted one. A job array
splits the work: task `shard` of `num_shards` computes the shards whose index % num_shards == shard.

The hidden state is the decoder's `last_hidden_state`, i.e. after the final RMSNorm: exactly the LM head's input
(transformers 5 also puts it in `hidden_states[-1]`). Positions come from the attention mask, so left and right
padding give the same states.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from medminds_hpc import artifacts, fileio
from medminds_hpc.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from medminds_hpc.runs import Run

EXPERTS: tuple[str, ...] = ("task", "domain")
MANIFEST = "manifest.json"
SHARD_FILE = "shard-{:05d}.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
FORMAT = 1
DTYPE = "float32"
IDS_KEY = "ids"  # the shard's row ids, a JSON list in the safetensors metadata

ShardDone = Callable[[int], None]


# the two experts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertInfo:
    """What identifies one frozen expert in the cache: its run, base model, tokenizer and adapter bytes."""

    name: str
    run_id: str
    model: str
    tokenizer: str
    adapter_dir: Path
    adapter_sha256: str


def expert_info(name: str, run: "Run") -> ExpertInfo:
    """Read an expert run's identity from its files; a run without a saved adapter is a UserError."""
    adapter = artifacts.path(run, artifacts.ADAPTER)
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UserError(f"expert {name!r}: run {run.id} has no {weights.relative_to(run.dir)} (state {run.state}); "
                        f"finish that run first (medminds submit {run.data.get('experiment', run.id)})")
    model = str(run.data.get("model") or "")
    if not model:
        raise UserError(f"expert {name!r}: {run.path} names no model; resubmit that run with --model NAME")
    return ExpertInfo(name, run.id, model, _tokenizer_identity(adapter, model), adapter, fileio.sha256_file(weights))


def _tokenizer_identity(adapter: Path, model: str) -> str:
    """The tokenizer an adapter was trained with: its saved tokenizer files' sha256 when it has them; for a tiny
    model the name of the base it was built as (the tiny cache key covers the tokenizer); else the model name."""
    saved = [adapter / f for f in TOKENIZER_FILES if (adapter / f).is_file()]
    if saved:
        h = hashlib.sha256()
        for f in saved:
            h.update(f.name.encode() + b"\0" + fileio.sha256_file(f).encode())
        return "sha256:" + h.hexdigest()
    try:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    except (OSError, ValueError):
        base = ""
    from medminds_hpc.modeling.loading import REGISTRY

    spec = REGISTRY.get(model)
    if spec is not None and spec.kind == "tiny" and base:
        return Path(base).name
    return model


def check_same_base(experts: Sequence[ExpertInfo]) -> None:
    """Both experts must be adapters of one base model with one tokenizer: the cache loads that base once."""
    a, b = experts
    if a.model != b.model:
        raise UserError(f"experts {a.run_id} (model {a.model!r}) and {b.run_id} (model {b.model!r}) were trained on "
                        f"different base models; the feature cache attaches both adapters to one base: use two expert "
                        f"runs of the same --model (resubmit one with --model {a.model})")
    if a.tokenizer != b.tokenizer:
        raise UserError(f"experts {a.run_id} (tokenizer {a.tokenizer}) and {b.run_id} (tokenizer {b.tokenizer}) of "
                        f"model {a.model!r} were trained with different tokenizers; resubmit one of them with the "
                        f"other's tokenizer ($MEDMINDS_TOKENIZER) so both read the same token ids")


def experts_of(expert_runs: Mapping[str, "Run"]) -> list[ExpertInfo]:
    """The two experts, in EXPERTS order, checked to share one base and tokenizer."""
    if sorted(expert_runs) != sorted(EXPERTS):
        raise UserError(f"the feature cache needs exactly the experts {', '.join(EXPERTS)}; got {', '.join(expert_runs) or 'none'}")
    infos = [expert_info(name, expert_runs[name]) for name in EXPERTS]
    check_same_base(infos)
    return infos


def load_experts(expert_runs: Mapping[str, "Run"], *, device: str | None = None, quantize: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer): the shared base loaded ONCE with both adapters attached by name, frozen."""
    from medminds_hpc.modeling.adapters import attach_adapters
    from medminds_hpc.modeling.loading import load_model

    infos = experts_of(expert_runs)
    base, tokenizer = load_model(infos[0].model, device=device, quantize=quantize)  # type: ignore[arg-type]
    _check_loaded_base(base, infos)
    return attach_adapters(base, {e.name: e.adapter_dir for e in infos}), tokenizer


def _check_loaded_base(base: Any, infos: Sequence[ExpertInfo]) -> None:
    """A tiny base is built around the tokenizer of this environment: it must be the one the experts were trained on."""
    from medminds_hpc.modeling.loading import REGISTRY

    spec = REGISTRY.get(infos[0].model)
    here = Path(str(getattr(base, "name_or_path", ""))).name
    if spec is not None and spec.kind == "tiny" and here != infos[0].tokenizer:
        raise UserError(f"experts {infos[0].run_id} and {infos[1].run_id} were trained on {infos[0].tokenizer}, but "
                        f"{infos[0].model!r} builds here as {here} (another tokenizer): set $MEDMINDS_TOKENIZER as when "
                        f"they were trained")


# computing hidden states -------------------------------------------------------------------------------------
def hidden_states(model: Any, tokenizer: Any, texts: Sequence[str], *, names: Sequence[str] = EXPERTS,
                  batch_size: int = 32, max_length: int = 512, padding_side: str = "right") -> dict[str, "np.ndarray"]:
    """{adapter name: float32 (len(texts), hidden)}: the final normed hidden state at each prompt's last real token.

    The batches are tokenised once and run through each adapter in turn (`use_adapter`); they go longest-first so
    similar lengths share one, and rows come back in input order.
    """
    import numpy as np
    import torch

    from medminds_hpc.data import prompts
    from medminds_hpc.modeling.adapters import use_adapter
    from medminds_hpc.modeling.heads import decoder_of

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    hidden = int(decoder_of(model).config.hidden_size)
    out = {name: np.zeros((len(texts), hidden), dtype=np.float32) for name in names}
    step = max(1, batch_size)
    batches = [(idx, prompts.encode_prompts(tokenizer, [texts[i] for i in idx], max_length=max_length, padding_side=padding_side))
               for idx in (order[at:at + step] for at in range(0, len(order), step))]
    with torch.no_grad():
        for name in names:
            with use_adapter(model, name):
                for idx, batch in batches:
                    out[name][idx] = last_token_states(model, batch).float().cpu().numpy()
    return out


def last_token_states(model: Any, batch: Mapping[str, Any]) -> Any:
    """(rows, hidden): the decoder's final normed state at each row's `last_index`, through the active adapter(s).

    Differentiable (the caller decides about no_grad); positions come from the attention mask, so the padding side
    does not change the result."""
    import torch

    from medminds_hpc.modeling.heads import decoder_of

    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoder = decoder_of(model)
    with layers_in_row_blocks(decoder):
        states = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return states.last_hidden_state[torch.arange(ids.shape[0], device=device), batch["last_index"].to(device)]


CHUNK_POSITIONS = 1024  # (rows x sequence) positions per block of a decoder layer when nothing needs a gradient


@contextlib.contextmanager
def layers_in_row_blocks(decoder: Any, positions: int | None = None) -> Iterator[None]:
    """Within the block, each decoder layer runs over blocks of whole rows of at most `positions` positions (default
    CHUNK_POSITIONS) whenever no gradient is recorded and no KV cache is filled; the batch still goes through the
    layers together.

    A layer mixes positions only within a row, so the states are the same. But a frozen forward's largest tensors
    are a layer's temporaries (norms, each projection and its LoRA branch, rotary embeddings, the MLP's gate and up
    products: rows x sequence x hidden or intermediate, several at once); in blocks they stop growing with the
    batch, and what the batch still costs is the residual stream between layers. With a gradient the activations
    are kept anyway, so the layers run whole."""
    import torch

    positions = positions or CHUNK_POSITIONS

    def rows_of(value: Any, start: int, end: int, batch: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value[start:end]
        if isinstance(value, (tuple, list)):
            return type(value)(rows_of(v, start, end, batch) for v in value)
        return value

    def in_blocks(forward: Callable[..., Any]) -> Callable[..., Any]:
        def run(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            batch = hidden_states.shape[0]
            step = max(1, positions // max(1, hidden_states.shape[1]))
            if torch.is_grad_enabled() or kwargs.get("use_cache") or batch <= step:
                return forward(hidden_states, *args, **kwargs)
            out = None
            for start in range(0, batch, step):
                end = min(batch, start + step)
                part = forward(hidden_states[start:end], *(rows_of(a, start, end, batch) for a in args),
                               **{k: rows_of(v, start, end, batch) for k, v in kwargs.items()})
                states = part[0] if isinstance(part, tuple) else part  # transformers < 5 returns a tuple
                if out is None:
                    out = states.new_empty(batch, *states.shape[1:])
                out[start:end] = states
            return (out,) if isinstance(part, tuple) else out
        return run

    patched = [layer for layer in decoder.layers if "forward" not in vars(layer)]  # nested: the outer one stands
    for layer in patched:
        layer.forward = in_blocks(layer.forward)
    try:
        yield
    finally:
        for layer in patched:
            del layer.forward


# the cache's identity ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheSpec:
    """Everything a cache must have been computed from to be used; any difference makes it stale."""

    experts: tuple[ExpertInfo, ...]
    split: str
    template: str
    max_length: int
    ids: tuple[str, ...]
    rows_per_shard: int

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def num_shards(self) -> int:
        return -(-self.rows // self.rows_per_shard)

    def shard_rows(self, index: int) -> tuple[int, int]:
        """[start, end) of shard `index` in the row order."""
        start = index * self.rows_per_shard
        return start, min(self.rows, start + self.rows_per_shard)

    def header(self) -> dict[str, Any]:
        """The manifest fields that must match (JSON types, as they are read back)."""
        return {
            "format": FORMAT,
            "experts": {e.name: {"run": e.run_id, "model": e.model, "tokenizer": e.tokenizer, "adapter_sha256": e.adapter_sha256}
                        for e in self.experts},
            "split": self.split,
            "template": self.template,
            "max_length": self.max_length,
            "dtype": DTYPE,
            "rows": self.rows,
            "ids_sha256": hashlib.sha256(json.dumps(list(self.ids)).encode()).hexdigest(),
            "rows_per_shard": self.rows_per_shard,
            "num_shards": self.num_shards,
        }


def cache_spec(expert_runs: Mapping[str, "Run"], rows: Sequence[Mapping[str, Any]], *, split: str,
               template: str = "paper", max_length: int = 512, rows_per_shard: int = 1000) -> CacheSpec:
    """The spec of a cache of `rows` (canonical MCQ rows) for these experts; checks the experts and the options."""
    from medminds_hpc.data import prompts

    prompts.check_template(template)
    if rows_per_shard < 1:
        raise UserError(f"rows_per_shard={rows_per_shard}: it must be at least 1")
    if max_length < 2:
        raise UserError(f"max_length={max_length}: it must be at least 2 (a prompt needs BOS and one token)")
    if not rows:
        raise UserError(f"split {split!r} has no rows: there is nothing to cache; check the prepared data")
    return CacheSpec(tuple(experts_of(expert_runs)), split, template, max_length, tuple(str(r["id"]) for r in rows), rows_per_shard)


# the cache on disk -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Features:
    """A whole, valid cache: float32 states per expert (rows, hidden) and the row ids, in the spec's row order."""

    ids: list[str]
    states: dict[str, "np.ndarray"]
    manifest: dict[str, Any]


def shard_path(directory: Path | str, index: int) -> Path:
    return Path(directory) / SHARD_FILE.format(index)


def read_manifest(directory: Path | str) -> dict[str, Any] | None:
    try:
        manifest = fileio.read_json(Path(directory) / MANIFEST)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_current(manifest: dict[str, Any] | None, spec: CacheSpec) -> bool:
    """Whether the manifest was written for exactly this spec (shards aside)."""
    return manifest is not None and all(manifest.get(k) == v for k, v in spec.header().items())


def _shard_bytes(directory: Path, index: int, entry: Mapping[str, Any] | None) -> bytes | None:
    """The shard's bytes when the manifest vouches for them (same sha256), else None (missing, truncated, stale)."""
    if not entry:
        return None
    try:
        data = shard_path(directory, index).read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == entry.get("sha256") else None


def _encode_shard(states: Mapping[str, "np.ndarray"], ids: Sequence[str]) -> bytes:
    from safetensors.numpy import save

    return save({name: states[name] for name in sorted(states)}, metadata={IDS_KEY: json.dumps(list(ids))})


def _decode_shard(data: bytes) -> tuple[list[str], dict[str, "np.ndarray"]]:
    from safetensors.numpy import load as load_tensors

    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {})
    return json.loads(metadata[IDS_KEY]), load_tensors(data)


def _start(directory: Path, spec: CacheSpec, hidden_size: int) -> None:
    """Make the manifest match `spec`: keep it when current, else start afresh and delete every old shard."""
    with fileio.locked(directory / MANIFEST):
        manifest = read_manifest(directory)
        if is_current(manifest, spec):
            return
        for old in directory.glob("shard-*.safetensors"):
            old.unlink(missing_ok=True)
        fileio.atomic_write_json(directory / MANIFEST, {**spec.header(), "hidden_size": hidden_size, "shards": {}})


def _record(directory: Path, spec: CacheSpec, index: int, sha256: str) -> None:
    """Add one finished shard to the manifest (under its lock: the tasks of a job array share it)."""
    with fileio.locked(directory / MANIFEST):
        manifest = read_manifest(directory)
        if not is_current(manifest, spec):
            raise RuntimeError(f"{directory / MANIFEST} was replaced for another spec while shard {index} was computed")
        assert manifest is not None
        start, end = spec.shard_rows(index)
        manifest["shards"][str(index)] = {"rows": [start, end], "sha256": sha256}
        fileio.atomic_write_json(directory / MANIFEST, manifest)


def my_shards(spec: CacheSpec, shard: int = 0, num_shards: int = 1) -> list[int]:
    """The cache shards task `shard` of a `num_shards` job array computes."""
    if not 0 <= shard < num_shards:
        raise UserError(f"shard {shard} of {num_shards}: the shard index must be in 0..{num_shards - 1}")
    return [i for i in range(spec.num_shards) if i % num_shards == shard]


def missing_shards(directory: Path | str, spec: CacheSpec) -> list[int]:
    """Shards not yet on disk, or not the ones the manifest vouches for (all of them when the spec changed)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if not is_current(manifest, spec):
        return list(range(spec.num_shards))
    assert manifest is not None
    shards = manifest.get("shards", {})
    return [i for i in range(spec.num_shards) if _shard_bytes(directory, i, shards.get(str(i))) is None]


def extract(directory: Path | str, spec: CacheSpec, rows: Sequence[Mapping[str, Any]], model: Any, tokenizer: Any, *,
            batch_size: int = 32, shard: int = 0, num_shards: int = 1, on_shard: ShardDone | None = None) -> list[int]:
    """Compute this task's missing or stale shards and return their indices; valid ones are left untouched.

    `on_shard(index)` runs after each shard is on disk and in the manifest: a stage passes
    `lambda i: ctx.step_done(i + 1, dict)` so a preemption stops there (the cache itself is the checkpoint).
    """
    from medminds_hpc.data import prompts

    directory = Path(directory)
    if tuple(str(r["id"]) for r in rows) != spec.ids:
        raise ValueError("rows differ from the rows the cache spec was made for; build the spec from the same rows")
    missing = set(missing_shards(directory, spec))
    todo = [i for i in my_shards(spec, shard, num_shards) if i in missing]
    if not todo:
        return []
    from medminds_hpc.modeling.heads import decoder_of

    directory.mkdir(parents=True, exist_ok=True)
    _start(directory, spec, int(decoder_of(model).config.hidden_size))
    names = [e.name for e in spec.experts]
    for index in todo:
        start, end = spec.shard_rows(index)
        texts = [prompts.mcq_prompt(r, spec.template) for r in rows[start:end]]
        states = hidden_states(model, tokenizer, texts, names=names, batch_size=batch_size, max_length=spec.max_length)
        data = _encode_shard(states, spec.ids[start:end])
        fileio.atomic_write_bytes(shard_path(directory, index), data)
        _record(directory, spec, index, hashlib.sha256(data).hexdigest())
        if on_shard is not None:
            on_shard(index)
    return todo


def load(directory: Path | str, spec: CacheSpec) -> Features | None:
    """The whole cache as arrays, or None when it is missing, stale or partial (then run `extract`, which
    rebuilds exactly what is not valid). Never returns data computed for anything but `spec`."""
    import numpy as np

    directory = Path(directory)
    manifest = read_manifest(directory)
    if not is_current(manifest, spec):
        return None
    assert manifest is not None
    ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {e.name: [] for e in spec.experts}
    for index in range(spec.num_shards):
        data = _shard_bytes(directory, index, manifest.get("shards", {}).get(str(index)))
        if data is None:
            return None
        shard_ids, tensors = _decode_shard(data)
        ids.extend(shard_ids)
        for name in parts:
            parts[name].append(tensors[name])
    if tuple(ids) != spec.ids:
        return None
    return Features(ids, {name: np.concatenate(p) for name, p in parts.items()}, manifest)


def ensure(directory: Path | str, expert_runs: Mapping[str, "Run"], rows: Sequence[Mapping[str, Any]], *, split: str,
           template: str = "paper", max_length: int = 512, rows_per_shard: int = 1000, batch_size: int = 32,
           shard: int = 0, num_shards: int = 1, on_shard: ShardDone | None = None, device: str | None = None) -> Features | None:
    """Bring the cache up to date for these experts and rows; the base model is loaded only if a shard of this task
    must be computed. Returns the whole cache, or None while other tasks of a job array still owe shards."""
    spec = cache_spec(expert_runs, rows, split=split, template=template, max_length=max_length, rows_per_shard=rows_per_shard)
    if set(missing_shards(directory, spec)) & set(my_shards(spec, shard, num_shards)):
        model, tokenizer = load_experts(expert_runs, device=device)
        extract(directory, spec, rows, model, tokenizer, batch_size=batch_size, shard=shard, num_shards=num_shards,
                on_shard=on_shard)
    return load(directory, spec)


# the frozen LM head on cached states -------------------------------------------------------------------------
def lm_head_layer(model: Any) -> Any:
    from medminds_hpc.modeling.heads import unwrap

    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        raise UserError(f"{type(inner).__name__} scales its logits after the LM head; cached states give its logits "
                        "only for a plain linear LM head (Mistral, Llama)")
    head = inner.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or not weight.is_floating_point():
        raise UserError("the LM head's weight is missing or quantized; load the base with its LM head in floating point")
    return head


def lm_head_logits(model: Any, states: Any) -> Any:
    """(rows, vocab) float32 logits: the frozen LM head applied to cached (rows, hidden) states."""
    import torch

    head = lm_head_layer(model)
    x = torch.as_tensor(states).to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        return head(x).float()


def letter_logits(model: Any, tokenizer: Any, states: Any) -> Any:
    """(rows, 4) float32 logits of " A".." D" only: the 4 LM-head rows, never the 32,000-wide product."""
    import torch

    from medminds_hpc.data import prompts

    head = lm_head_layer(model)
    letters = torch.tensor(prompts.letter_token_ids(tokenizer), device=head.weight.device)
    weight = head.weight.detach()[letters].float()
    x = torch.as_tensor(states).to(device=weight.device, dtype=torch.float32)
    out = x @ weight.T
    bias = getattr(head, "bias", None)
    return out + bias.detach()[letters].float() if bias is not None else out


# the frozen LM head beside the cache -------------------------------------------------------------------------
LM_HEAD_FILE = "lm_head.safetensors"
LM_HEAD_KEY = "lm_head"  # the file's metadata: JSON {model, tokenizer, letter_ids}


def save_lm_head(directory: Path | str, model: Any, tokenizer: Any, experts: Sequence[ExpertInfo]) -> None:
    """The base's LM head weight (in its own dtype) and the ids of " A".." D", beside the cache: a head trained
    from the cache needs nothing else of the base, so it never loads the model."""
    from safetensors.torch import save

    from medminds_hpc.data import prompts

    head = lm_head_layer(model)
    if getattr(head, "bias", None) is not None:
        raise UserError(f"{type(head).__name__} LM head has a bias; cached states give its logits only for a bias-free "
                        "LM head (Mistral, Llama)")
    # one metadata key: safetensors writes several in no fixed order, and the file must be byte-reproducible
    meta = {LM_HEAD_KEY: json.dumps({"model": experts[0].model, "tokenizer": experts[0].tokenizer,
                                     "letter_ids": prompts.letter_token_ids(tokenizer)}, sort_keys=True)}
    weight = head.weight.detach().cpu().contiguous()
    Path(directory).mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_bytes(Path(directory) / LM_HEAD_FILE, save({"weight": weight}, metadata=meta))


def load_lm_head(directory: Path | str, experts: Sequence[ExpertInfo]) -> tuple[Any, list[int]] | None:
    """(float32 weight vocab x hidden, letter ids) saved for these experts' base and tokenizer, or None when the
    file is missing, unreadable or was saved for another base."""
    from safetensors import safe_open

    path = Path(directory) / LM_HEAD_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[LM_HEAD_KEY])
            if meta.get("model") != experts[0].model or meta.get("tokenizer") != experts[0].tokenizer:
                return None
            return f.get_tensor("weight").float(), [int(i) for i in meta["letter_ids"]]
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
