"""N2N's policies, trained with REINFORCE.

- Removal: a bidirectional LSTM reads every unit's features and gives keep/remove logits per unit.
- Shrink: an autoregressive LSTM (two stacked LSTMCells, as in N2N) picks a ratio per unit,
  conditioned on the unit's features and its previous choice.

Both take only normalised per-unit features, so a policy trained on one teacher acts on another of
a different depth and width (transfer). Unlike the original code, every parameter is registered (the
shrink cells live in an nn.ModuleList) and each rollout is reinforced with its own advantage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces import FEATURE_DIM

from .base import Agent, AgentOptionError, Candidate, rollout, shown


class RemovalPolicy(nn.Module):
    def __init__(self, hidden: int = 30, layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(FEATURE_DIM, hidden, layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (T, F) of the stage's units -> logits (T, 2): keep, remove."""
        h, _ = self.lstm(feats[None])  # (1, T, 2H)
        return self.head(h[0])


class ShrinkPolicy(nn.Module):
    def __init__(self, n_ratios: int, hidden: int = 30):
        super().__init__()
        self.n_ratios, self.hidden = n_ratios, hidden
        self.cells = nn.ModuleList([nn.LSTMCell(FEATURE_DIM + n_ratios, hidden), nn.LSTMCell(hidden, hidden)])
        self.head = nn.Linear(hidden, n_ratios)

    def initial_state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        z = torch.zeros(1, self.hidden)
        return [(z, z) for _ in self.cells]

    def step(self, feat: torch.Tensor, prev: int | None, state):
        """feat (F,), previous action or None -> logits (K,), new state."""
        onehot = torch.zeros(self.n_ratios)
        if prev is not None:
            onehot[prev] = 1.0
        x = torch.cat([feat, onehot])[None]  # (1, F + K)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return self.head(x[0]), new_state


def masked_logits(logits: torch.Tensor, mask) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    return logits.masked_fill(~mask, float("-inf"))


def sequence_log_prob(policy: nn.Module, feats: torch.Tensor, actions, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """Episodes over the same units: feats (T, F), actions (B, T), masks (B, T, K) -> the sum of each
    episode's action log-probabilities under `policy` (B,) and of its masked choices' entropies (B,)."""
    acts = torch.as_tensor(actions)  # (B, T)
    masks = torch.as_tensor(masks, dtype=torch.bool)  # (B, T, K)
    b, t_len = acts.shape
    if isinstance(policy, RemovalPolicy):  # the logits do not depend on earlier actions
        logits = policy(feats).expand(b, -1, -1)  # (B, T, 2)
    else:  # teacher forcing: step t sees the action taken at t - 1, as in sampling
        state = [(h.expand(b, -1), c.expand(b, -1)) for h, c in policy.initial_state()]
        prev = torch.zeros(b, policy.n_ratios)  # (B, K) one-hot of the previous action; none at t = 0
        rows = []
        for t in range(t_len):
            x = torch.cat([feats[t].expand(b, -1), prev], 1)  # (B, F + K)
            new_state = []
            for cell, (h, c) in zip(policy.cells, state):
                h, c = cell(x, (h, c))
                new_state.append((h, c))
                x = h
            state = new_state
            rows.append(policy.head(x))  # (B, K)
            prev = nn.functional.one_hot(acts[:, t], policy.n_ratios).float()
        logits = torch.stack(rows, 1)  # (B, T, K)
    logp = torch.log_softmax(logits.masked_fill(~masks, float("-inf")), -1)  # (B, T, K)
    taken = logp.gather(2, acts[..., None]).squeeze(2)  # (B, T); 0 where the mask forced the action
    entropy = -(logp.exp() * logp.masked_fill(~masks, 0.0)).sum((1, 2))  # (B,)
    return taken.sum(1), entropy


MAX_HIDDEN = 1024  # the policies' LSTM width: 30 by default; 1024 is about 35M parameters, far past any use
MAX_BATCH = 10_000  # rollouts per update: 10 by default; a stage of the largest budget in a few batches


@dataclass
class ReinforceConfig:
    batch_size: int = 10  # rollouts per policy update (N2N used 5; 10 halves the gradient noise)
    lr: float | None = None  # None: 0.03 for removal, 0.01 for shrink (see lr_for)
    hidden: int = 30
    baseline_decay: float = 0.8  # exponential moving average of batch-mean rewards
    entropy_coef: float = 0.0
    # the starting policy: "auto" (the default) the shipped one where it fits (the same ratios and
    # hidden size, a teacher of the unit kinds it was fit on; it beat a fresh start in
    # benchmarks/search_quality.py), else fresh; None a fresh one (seeded); "pretrained" the one
    # shipped in agents/pretrained (fit to earlier searches, see agents/pretrain.py); or a folder
    # holding removal/ and shrink/ as `n2n policy fit` writes them
    policy: str | None = "auto"
    max_invalid_batches: int = 50  # give up proposing after this many all-invalid batches in a row
    # after a batch whose every spec the env refused, or that proposed mostly specs this stage had
    # already tried, the next is sampled at temperature 1 + the streak of such batches, at most
    # this: a policy sure of itself otherwise repeats refused or known specs until the stage gives
    # up (the shipped policy on digits: its removal stage ended after 24 of 30 candidates; a
    # 200-candidate search's refine stage after 14 of 57); 1: never
    explore_temperature: float = 4.0

    def __post_init__(self):
        # bounded: its rollouts are sampled at once (helper-89: 10^20 was taken, and the search never began)
        for ok, msg in ((1 <= self.batch_size <= MAX_BATCH, f"batch_size: expected 1 to {MAX_BATCH:,}, got {shown(self.batch_size)}"),
                        (self.lr is None or self.lr > 0, f"lr: expected > 0, got {self.lr}"),
                        # at most MAX_HIDDEN, for recorded runs too (helper-76: a received run's hidden of
                        # 100,000 allocated 160 GB for the LSTM before anything was said)
                        (1 <= self.hidden <= MAX_HIDDEN, f"hidden: expected 1 to {MAX_HIDDEN}, got {self.hidden}"),
                        (0 <= self.baseline_decay < 1, f"baseline_decay: expected in [0, 1), got {self.baseline_decay}"),
                        (self.entropy_coef >= 0, f"entropy_coef: expected >= 0, got {self.entropy_coef}"),
                        (self.max_invalid_batches >= 1, f"max_invalid_batches: expected >= 1, got {self.max_invalid_batches}"),
                        (self.explore_temperature >= 1, f"explore_temperature: expected >= 1, got {self.explore_temperature}")):
            if not ok:
                raise ValueError(msg)

    def check_new(self) -> None:
        """Checks added after searches were recorded with such options (a recorded run is read as it
        is: an Adam rate of 2 trained, an infinite temperature cap is no cap): applied to a new search's."""
        for ok, msg in (
                # helper-72: an infinite (or huge) rate made every probability NaN after the first
                # update, a traceback from torch.multinomial mid-search
                (self.lr is None or self.lr <= 1, f"lr: expected a learning rate > 0 and at most 1, got {self.lr}"),
                (self.entropy_coef < float("inf"), f"entropy_coef: expected a finite number >= 0, got {self.entropy_coef}"),
                (self.explore_temperature < float("inf"),
                 f"explore_temperature: expected a finite number >= 1, got {self.explore_temperature}"),
                # (helper-72: "" was read as the current folder, then named as "shrink: expected policy.json")
                (self.policy is None or self.policy.strip() != "",
                 f"policy: expected auto, pretrained, null or a folder `n2n policy fit` wrote, got {self.policy!r}")):
            if not ok:
                raise ValueError(msg)

    def lr_for(self, stage: str) -> float:
        # N2N used 3e-3 and 0.1; these learned on every seed of the proxy problem
        # (benchmarks/proxy_agents.py), where 0.1 for shrinking learned least.
        return self.lr if self.lr is not None else (0.03 if stage == "removal" else 0.01)


def _spec_key(rollout: dict) -> str:
    return json.dumps(rollout["spec"], sort_keys=True)


class ReinforceAgent(Agent):
    """REINFORCE with an EMA baseline over batches of `batch_size` rollouts.

    A batch is sampled at once; its invalid specs get -1 immediately, the rest are handed out by
    `ask` and the policy updates when the last of them is told.
    """

    name = "reinforce"

    Options = ReinforceConfig

    def __init__(self, env, seed: int = 0, options: ReinforceConfig | None = None):
        super().__init__(env, seed)
        self.cfg = options or ReinforceConfig()
        with torch.random.fork_rng(devices=[]):  # seeded initial policy, the caller's RNG untouched
            torch.manual_seed(seed)
            if env.stage == "removal":
                self.policy = RemovalPolicy(self.cfg.hidden)
            else:
                self.policy = ShrinkPolicy(len(env.space.ratios), self.cfg.hidden)
        policy = resolve_policy(self.cfg.policy, env.kind, env.space, self.cfg.hidden)
        if policy is not None:
            self.load_policy(policy_folder(policy, env.kind))
        self.started_from = policy or "fresh"
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr_for(env.kind))
        self.gen = torch.Generator().manual_seed(seed)
        self.baseline: float | None = None
        self.updates = 0
        self.batch: list[dict] = []  # rollouts of the current batch: actions, masks, reward or None
        self.queue: list[int] = []  # ids sampled but not handed out yet
        self.invalid_streak = 0
        self.seen: set[str] = set()  # the specs this stage's batches proposed
        self.stale_streak = 0  # up a step per batch of mostly known specs, down a step per mostly new one
        self.history: list[float] = []  # mean reward of each batch, for progress reports
        self._feats = torch.as_tensor(env.space.features()[env.active])  # (T, F)

    # -- sampling -------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, mask) -> int:
        # hotter after batches the env refused whole or that held mostly known specs; the update
        # still scores the policy's own probabilities
        temperature = min(1.0 + self.invalid_streak + self.stale_streak, self.cfg.explore_temperature)
        probs = torch.softmax(masked_logits(logits, mask) / temperature, -1)
        return int(torch.multinomial(probs, 1, generator=self.gen))

    def _rollout(self) -> dict:
        masks: list[list[int]] = []
        if isinstance(self.policy, RemovalPolicy):
            with torch.no_grad():
                logits = self.policy(self._feats)  # (T, 2)
            pos = {u: t for t, u in enumerate(self.env.active)}

            def choose(obs, mask):
                masks.append(mask.tolist())
                return self._sample(logits[pos[int(obs["index"])]], mask)
        else:
            state, prev, t = self.policy.initial_state(), [None], [0]

            def choose(obs, mask):
                nonlocal state
                with torch.no_grad():
                    logits, state = self.policy.step(self._feats[t[0]], prev[0], state)
                masks.append(mask.tolist())
                a = self._sample(logits, mask)
                prev[0], t[0] = a, t[0] + 1
                return a

        actions, spec, reward, pending = rollout(self.env, choose)
        return {"actions": [actions[u] for u in self.env.active], "masks": masks,
                "spec": spec.to_dict(), "reward": None if pending else float(reward)}

    def ask(self, n: int) -> list[Candidate]:
        while not self.queue and not self.pending and not self.finished:
            self.batch = [self._rollout() for _ in range(self.cfg.batch_size)]
            keys = [_spec_key(r) for r in self.batch]
            # mostly known: hotter; mostly new: cooler again, a step at a time (a reset would swing
            # between a hot batch of new specs and a cold one of known ones)
            fresh = len(set(keys) - self.seen)
            self.stale_streak = self.stale_streak + 1 if 2 * fresh < len(keys) else max(0, self.stale_streak - 1)
            self.seen.update(keys)
            for i, r in enumerate(self.batch):
                if r["reward"] is None:
                    self.queue.append(i)
            if not self.queue:  # every rollout invalid: learn from that at once
                self.invalid_streak += 1
                self._update()
        out = []
        while self.queue and len(out) < n:
            i = self.queue.pop(0)
            cid = self._new_id()
            self.pending[cid] = {"slot": i}
            out.append(Candidate(cid, self._spec(i)))
        return out

    def _spec(self, i: int):
        from search_spaces import StudentSpec

        return StudentSpec.from_dict(self.batch[i]["spec"])

    @property
    def finished(self) -> bool:
        return self.invalid_streak >= self.cfg.max_invalid_batches

    def tell(self, cid, reward, evaluation=None):
        slot = self._check_told(cid, reward)["slot"]
        self.batch[slot]["reward"] = float(reward)
        if all(r["reward"] is not None for r in self.batch):
            self.invalid_streak = 0
            self._update()

    # -- learning ---------------------------------------------------------------------------------
    def log_prob(self, rollouts: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per rollout (B,): the sum of its actions' log-probabilities under the current policy, and
        its entropy."""
        return sequence_log_prob(self.policy, self._feats, [r["actions"] for r in rollouts],
                                 [r["masks"] for r in rollouts])

    def _update(self):
        rewards = torch.tensor([r["reward"] for r in self.batch])  # (B,)
        mean = float(rewards.mean())
        if self.baseline is None:
            self.baseline = mean
        # Each rollout's own advantage (the original reinforced every rollout with the batch mean).
        # Not divided by the batch's std: a batch of equal rewards (all invalid, say) would blow up.
        self._learn(rewards - self.baseline)
        d = self.cfg.baseline_decay
        self.baseline = d * self.baseline + (1 - d) * mean
        self.updates += 1
        self.history.append(mean)
        self.batch, self.queue = [], []

    def _learn(self, adv: torch.Tensor) -> None:
        """One gradient step on the batch, given each rollout's advantage (B,)."""
        logp, ent = self.log_prob(self.batch)  # (B,) log-probability and entropy of each whole rollout
        loss = -(adv * logp).mean() - self.cfg.entropy_coef * ent.mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self):
        return {**super().state_dict(), "policy": self.policy.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": self.gen.get_state(), "baseline": self.baseline, "updates": self.updates,
                "batch": self.batch, "queue": self.queue, "invalid_streak": self.invalid_streak,
                "history": self.history, "seen": sorted(self.seen), "stale_streak": self.stale_streak}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if problem := weights_problem(state["policy"], "the search state's policy"):  # a resume falls back on it
            raise ValueError(problem)
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["rng"])
        self.baseline, self.updates = state["baseline"], state["updates"]
        self.batch, self.queue = state["batch"], state["queue"]
        self.invalid_streak, self.history = state["invalid_streak"], state["history"]
        # states saved before known specs made sampling hotter: rebuilt from the batch in hand
        self.seen = set(state.get("seen", map(_spec_key, self.batch)))
        self.stale_streak = state.get("stale_streak", 0)

    # -- transfer ---------------------------------------------------------------------------------
    def save_policy(self, folder) -> Path:
        """The policy alone (safetensors + JSON), to start a search on another teacher."""
        return write_policy(self.policy, self.env.kind, self.env.space.ratios, folder, asdict(self.cfg))

    def load_policy(self, folder) -> None:
        folder = Path(folder)
        problem = policy_problem(folder, self.env.kind, list(self.env.space.ratios), self.cfg.hidden)
        if problem:
            raise AgentOptionError(f"policy: {problem}")
        self.policy.load_state_dict(load_file(str(folder / "policy.safetensors")), strict=True)


def write_policy(policy: nn.Module, stage: str, ratios, folder, config: dict, extra: dict | None = None) -> Path:
    """A policy alone, as `load_policy` and the `policy` option read it: FOLDER/policy.safetensors and
    FOLDER/policy.json (stage, ratios, the agent config it needs, e.g. hidden; `extra` under "pretrained")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(folder / "policy.safetensors"))
    meta = {"stage": stage, "ratios": list(ratios), "config": config, **({"pretrained": extra} if extra else {})}
    (folder / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def policy_root(policy: str) -> Path:
    """The folder the `policy` option names: the shipped one for "pretrained", else the path (~ is the
    home folder, as in data paths: helper-63)."""
    from .pretrain import PRETRAINED

    return PRETRAINED if policy == "pretrained" else Path(policy).expanduser()


def resolve_policy(policy: str | None, stage: str, space, hidden: int) -> str | None:
    """The `policy` option made concrete: "auto" is "pretrained" where the shipped policy fits the
    stage (see `auto_policy`), else None (fresh); anything else as given."""
    return auto_policy(stage, space, hidden)[0] if policy == "auto" else policy


def auto_policy(stage: str, space, hidden: int) -> tuple[str | None, str]:
    """("pretrained", "") where the shipped policy fits `stage` (same ratios and hidden size) and was fit
    on teachers made of the same kinds of units as `space` (its transfer to others is unmeasured); else
    (None, why not). A shipped policy that is damaged is an AgentOptionError (helper-63: `auto` started
    fresh, unsaid, where `pretrained` refused it)."""
    folder = policy_folder("pretrained", stage)
    try:
        meta = json.loads((folder / "policy.json").read_text())
        ratios, fit_hidden = meta["ratios"], meta["config"]["hidden"]
        seen = set(meta["pretrained"]["unit_kinds"])
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        meta = None  # said by policy_problem below
    if meta is not None:
        kinds = sorted({u.kind for u in space.units} - seen)
        if stage == "shrink" and ratios != list(space.ratios):
            return None, f"the shipped shrink policy picks from ratios {ratios}, this search from {list(space.ratios)}"
        if fit_hidden != hidden:
            return None, f"the shipped policy has hidden={fit_hidden}, this search agent_options.hidden={hidden}"
        if kinds:
            return None, (f"the shipped policy was fit on teachers of {', '.join(sorted(seen))} units; this one has "
                          f"{', '.join(kinds)} units, to which its transfer is unmeasured")
    problem = policy_problem(folder, stage, list(space.ratios), hidden) or (meta is None and (
        f"{folder}/policy.json: expected ratios, config.hidden and pretrained.unit_kinds, as n2n writes them"))
    if problem:  # (helper-64: a policy.json without them was taken for every teacher)
        raise AgentOptionError(f"search.agent_options.policy: auto, but the shipped policy is damaged ({problem}); "
                               "reinstall n2n, or start fresh with search.agent_options.policy: null")
    return "pretrained", ""


def policy_folder(policy: str, stage: str) -> Path:
    """Where the `policy` option's weights for `stage` are."""
    return policy_root(policy) / stage


def policy_problem(folder: Path, stage: str, ratios: list[float], hidden: int) -> str | None:
    """Why the policy saved in `folder` cannot start `stage` over `ratios` with `hidden` units, or None."""
    lacking = [name for name in ("policy.json", "policy.safetensors") if not (folder / name).is_file()]
    if lacking:  # (a FIFO under the name is not a file either)
        found = "neither" if len(lacking) == 2 else f"no {lacking[0]}"
        return f"{folder}: expected policy.json and policy.safetensors (a saved {stage} policy), found {found}"
    try:
        meta = json.loads((folder / "policy.json").read_text())
    except (OSError, ValueError, RecursionError) as e:
        return f"{folder}/policy.json: damaged, not readable JSON ({e})"
    if not isinstance(meta, dict):
        return f"{folder}/policy.json: expected a JSON object, found {type(meta).__name__}"
    if meta.get("stage") not in ("removal", "shrink"):  # (helper-63: "is for the None stage")
        return f"{folder}/policy.json: expected \"stage\" removal or shrink, as n2n writes it, found {meta.get('stage')!r}"
    if meta.get("stage") != stage:
        return f"policy in {folder} is for the {meta.get('stage')} stage, this agent is {stage}"
    if stage == "shrink" and meta.get("ratios") != list(ratios):
        return f"policy in {folder} picks from ratios {meta.get('ratios')}, this space has {list(ratios)}"
    config = meta.get("config", {})
    if not isinstance(config, dict):  # helper-28: an AttributeError traceback
        return f"{folder}/policy.json: expected \"config\" to be a JSON object, found {config!r}"
    found = config.get("hidden", hidden)
    if not isinstance(found, int) or isinstance(found, bool):  # (helper-63: "hidden=30, this agent hidden=30")
        return f"{folder}/policy.json: expected \"hidden\" a whole number, as n2n writes it, found {found!r}"
    if found != hidden:
        return f"policy in {folder} has hidden={found}, this agent hidden={hidden}"
    from safetensors import safe_open

    with torch.random.fork_rng(devices=[]):  # only the shapes matter; the caller's RNG stays untouched
        want = RemovalPolicy(hidden) if stage == "removal" else ShrinkPolicy(len(ratios), hidden)
    want = {k: tuple(v.shape) for k, v in want.state_dict().items()}
    try:
        with safe_open(str(folder / "policy.safetensors"), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # a damaged or foreign file
        return f"{folder / 'policy.safetensors'}: not readable as safetensors ({e})"
    if found != want:
        wrong = sorted(set(want) ^ set(found)) or sorted(k for k in want if want[k] != found[k])
        return f"{folder / 'policy.safetensors'}: expected the {stage} policy's tensors {want}, found other names or shapes ({', '.join(wrong[:4])})"
    # helper-25: NaN weights passed, and the search died in torch.multinomial after its run folder existed
    return weights_problem(load_file(str(folder / "policy.safetensors")), str(folder / "policy.safetensors"))


MAX_WEIGHT = 1e3  # trained policies hold weights of a few units (the shipped ones: at most 1.3)


def weights_problem(tensors: dict, where: str) -> str | None:
    """Why a policy's tensors cannot sample, or None: NaN/inf (helper-25), or finite weights large enough
    to overflow its logits (helper-97: 3e38 everywhere passed, and the search died in torch.multinomial
    after its run folder existed, as did every resume)."""
    bad = sorted(k for k, v in tensors.items() if not (v.is_floating_point() and torch.isfinite(v).all()))
    if bad:
        return f"{where}: expected finite float weights, found others in {', '.join(bad[:4])}"
    big = {k: v.abs().max().item() for k, v in tensors.items() if v.numel() and v.abs().max().item() > MAX_WEIGHT}
    if big:
        k = max(big, key=big.get)
        return (f"{where}: expected weights of magnitude at most {MAX_WEIGHT:g}, as trained policies hold, found "
                f"{big[k]:.3g} in {k}; larger ones overflow the policy's probabilities")
    return None
