"""Which candidate a run stands for: the one `n2n export` writes, and why. One rule, used by the
export, by the search's last line and by summary.json, so that all three name the same student."""

from __future__ import annotations

import math

from envs import Evaluation, Reference, RewardConfig, compression, reward, size_of, within_drop

from .errors import RunError


def finished(rec: dict, early_stop: bool) -> bool:
    """Whether a candidate ran to the end and saved its weights. With early stopping, a trial Tune
    stopped (ASHA) sent only per-epoch reports, which lack the final report's "ended"."""
    return not early_stop or "ended" in rec


def misscored(records: list[dict], reference: Reference, reward_config: RewardConfig) -> list[tuple[dict, float, float]]:
    """The records whose recorded reward or compression their own figures do not give against
    `reference` (the run's teacher) under `reward_config`: (record, reward, compression) as they
    should be. A file edited since, or a run scored by another version's reward."""
    out = []
    for r in records:
        ev = Evaluation.from_dict(r)
        now = (reward(ev, reference, reward_config), compression(ev, reference, reward_config))
        was = (r["reward"], r.get("compression", now[1]))  # (runs that did not record compression)
        if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(was, now)):
            out.append((r, *now))
    return out


def from_figures(records: list[dict], reference: Reference, reward_config: RewardConfig, where: str,
                 what: str, strict: bool = True) -> tuple[list[dict], str | None]:
    """`records` with the rewards their figures give against `reference` under `reward_config`, and a
    warning where some recorded another (candidates.json edited, or an earlier n2n's reward scored
    them): report, export and policy fit rank by the figures (helper-46: a reward edited to 1e300 was
    exported by `--rank 1` and fitted by `policy fit`, unsaid but in report). A compression that a
    candidate's size does not give against the teacher is refused (`strict`; export checks n2n.json's
    teacher against the teacher itself, and says more): one file or the other was edited. `where`
    names the run; `what` ends the warning (what the command does with them)."""
    wrong = misscored(records, reference, reward_config)
    resized = [(r, c) for r, _, c in wrong if "compression" in r and not math.isclose(r["compression"], c, abs_tol=1e-9)]
    if resized and strict:
        r, c = resized[0]
        raise RunError(f"{where}: candidates.json and n2n.json disagree: {len(resized)} of {len(records)} candidates "
                       f"record a compression their size does not give against n2n.json's teacher (e.g. {r['key']}: "
                       f"{r['compression']:.4f} recorded, {c:.4f} from its figures): one of them was edited since")
    if not wrong:
        return records, None
    now = {id(r): (rw, c) for r, rw, c in wrong}
    fixed = [{**r, "reward": now[id(r)][0], "compression": now[id(r)][1]} if id(r) in now else r for r in records]
    r, rw, _ = wrong[0]
    return fixed, (f"warning: {len(wrong)} of {len(records)} candidates of {where} record a reward their figures do not "
                   f"give under this n2n's reward (e.g. {r['key']}: {r['reward']:.4g}, {rw:.4f} from its figures): "
                   f"candidates.json, or the reward or target in n2n.json, was edited, or an earlier n2n's reward "
                   f"scored them; {what}")


def by_reward(records, reward_config: RewardConfig) -> list[dict]:
    """`records`, best reward first; of equal rewards the smaller (`size_of`), then the more accurate.
    Outside an accuracy target the reward counts the miss alone, so students of one accuracy tie
    whatever their size (helper-91: the first recorded, twice the size of another, took the tie and a
    finalist's place, and export named it). `--rank N` is row N of the report's leaderboard: both rank so."""
    return sorted(records, key=lambda r: (-r["reward"], size_of(r, reward_config), -r["accuracy"]))


def front(records: list[dict], size) -> list[dict]:
    """The accuracy/size Pareto front of `records`, smallest first: each member more accurate than
    every smaller one. `size(record)` is the size that counts."""
    out, best = [], -1.0
    for r in sorted(records, key=lambda r: (size(r), -r["accuracy"])):
        if r["accuracy"] > best:
            out.append(r)
            best = r["accuracy"]
    return out


# The revision of the rules that choose students (the finalists, refine's bases, export's pick, the
# rewards): a run records the one it was made under (n2n.json "rules"), so that another n2n resuming,
# reporting or exporting it says its choices may differ (helper-65: an older run resumed now got other
# finalists, unsaid). Bump it with any change to those rules.
RULES = 3  # 2 (2026-12-07): finalist places left go to candidates within reach before the front;
# 3 (2026-12-08): ties of reward go to the smaller student (`by_reward`)


def rules_note(meta: dict) -> str | None:
    """A note where the run was made under other rules than this n2n's (`RULES`), else None."""
    made = meta.get("rules")
    if made == RULES:
        return None
    which = ("an earlier n2n (one that recorded no rules revision, before 2026-12-07)" if made is None else
             f"{'a newer' if isinstance(made, int) and made > RULES else 'an earlier'} n2n (rules revision {made}, "
             f"this n2n's {RULES})")
    return (f"note: this run was made by {which}: what is still to be chosen (finalists, refine's bases) and "
            "export's pick follow this n2n's rules, which may choose other students than the n2n that started it")


def summary_note(summary: dict | None, picked: str) -> str | None:
    """A note where a finished run's summary.json names another student than `picked` (its finalist
    twin, KEY@Nep of the named KEY, is the same student trained longer: no note), else None."""
    named = ((summary or {}).get("best") or {}).get("key")
    if named in (None, picked) or picked.split("@")[0] == named:  # (helper-65: an older summary named the twin)
        return None
    # written by an earlier n2n or under a target n2n.json no longer holds (helper-42, helper-62)
    return (f"note: the run's summary.json names {named}, picked when it was written (by an earlier n2n, or under "
            f"the target n2n.json held then); this n2n's rule and n2n.json's target pick {picked} "
            f"(`--key {named}` exports that one)")


# points past an accuracy target within which a candidate may still meet it: brief distillation
# underrates students, and the finalists' longer one recovers some of those below the target
REACH = 2.0


def finalists(records: list[dict], k: int, drop: float | None, teacher_accuracy: float,
              reward_config: RewardConfig, reach: float = REACH, target=None) -> list[dict]:
    """The `k` candidates worth distilling longer. With an accuracy target (`drop` points): the
    smallest of the front within `drop + reach` points of the teacher (brief distillation underrates
    students, so the longer one recovers some of those below the target), and when none of those
    meets the whole target (`target`: an n2n.config.TargetConfig; else the drop alone) the smallest
    candidate that does takes the last place, or where none does, the nearest miss (under the target's
    reward); places left go to the other candidates within reach by reward, then the rest of the front.
    With size or latency limits alone: the most accurate
    candidates within them, on the front or not (size within the limits does not matter there), the
    rest by reward (which ranks those nearest the limits next). Otherwise the rest, or all without a
    target, the front's best by reward. Those that meet the target are sought among all candidates,
    not the front's members only: a limit on FLOPs or latency does not follow the params front
    (helper-34)."""
    ok = [r for r in records if r["stage"] != "finalists" and r["failure"] is None and r["reward"] > -1]
    def size(r):
        return size_of(r, reward_config)

    members = front(ok, size)
    whole = target is not None and target.is_set()  # the whole target: size and latency limits too (helper-23)
    if drop is None:  # limits alone: the most accurate within them (none without a target)
        inside = [r for r in ok if whole and target.met_by(r, teacher_accuracy)]
        chosen = sorted(inside, key=lambda r: (-r["accuracy"], size(r)))[:k]
        if whole:  # the rest by reward, which ranks those nearest the limits next (helper-37)
            members = ok
    else:
        meets = (front([r for r in ok if target.met_by(r, teacher_accuracy)], size) if whole  # smallest first
                 else [r for r in members if within_drop(teacher_accuracy, r["accuracy"], drop)])
        chosen = [r for r in members if (teacher_accuracy - r["accuracy"]) * 100 <= drop + reach][:k]
        if k and meets and not any(r in meets for r in chosen):
            # every one of the k smallest misses the target: the last place goes to the smallest that meets
            # it, or export could only ship a student past the target while the run holds one within it
            chosen = chosen[:k - 1] + meets[:1]
        elif k and ok and not meets and reward_config.kind == "target":
            # none meets it: the last place goes to the nearest miss (the best by the target's reward), or
            # export shipped a finalist 2.6 points past the target beside one 1.1 past (helper-47)
            nearest = by_reward(ok, reward_config)[0]
            if nearest not in chosen:
                chosen = chosen[:k - 1] + [nearest]
    # places left: first any candidate within reach, front or not, then the rest of the front (helper-68:
    # a student 62 points below the teacher took a place, being on the front, beside two within reach)
    near = [] if drop is None else [r for r in ok if (teacher_accuracy - r["accuracy"]) * 100 <= drop + reach]
    for pool in (near, members):
        for r in by_reward(pool, reward_config):
            if len(chosen) < k and r not in chosen:
                chosen.append(r)
    return chosen


# how `choose` says no candidate had the margin (helper-77: it ended "with the most")
SHORT_OF_MARGIN = "the one that meets it with the most to spare"
# how `choose` says no candidate meets the target at all: its pick is then only the best by reward,
# which export writes when asked by --key (helper-62: it wrote it unasked, exit 0, a warning the only sign)
NONE_MEETS = "no candidate meets the target"


def meets_none(why: str) -> bool:
    """Whether `choose` said `why` of a pick outside the target (the best by reward)."""
    return why.startswith(NONE_MEETS + ";")


def none_meets_said(why: str, student: str, misses: list[str]) -> str:
    """What export, report and the search's last line say where `choose` found none that meets the
    target (`why`): that export writes none unasked, and which student it names instead, `student`
    in words, with what it `misses` (n2n.config.TargetConfig.misses). That student is the best
    finalist (else candidate) by reward: the finalists' longer distillation speaks for them first
    (helper-70: "nearest by reward" named a finalist below its own stage record's reward)."""
    return (f"{NONE_MEETS}, so `n2n export` writes none unasked; {why.removeprefix(NONE_MEETS + '; ')}: {student} "
            f"({'; '.join(misses)})")


def points(x: float) -> str:
    """'1 point', '0.25 points'."""
    return f"{x:g} point{'' if x == 1 else 's'}"


def size_said(target, reward_config: RewardConfig, rec: dict, teacher_flops: int) -> str:
    """', 95,047 FLOPs, 73.20x fewer' where the run limits or compresses FLOPs, and ', 0.852 ms, 2.7x
    faster' where it limits or compresses latency, for the lines that name a student by its params and
    their "x smaller" (helper-47: the figure limited was in metrics.json alone; helper-77: a FLOPs run's
    progress said 8.1x of the student those lines called 7.05x smaller, by params; helper-88: a latency
    run's last line said nothing of latency); else ''. `rec`: a record, or an export's metrics."""
    said = ""
    if getattr(target, "max_flops", None) is not None or reward_config.compression == "flops":
        said += f", {rec['flops']:,} FLOPs, {teacher_flops / max(rec['flops'], 1):.2f}x fewer"
    timed = rec.get("latency_ms")
    if timed and (getattr(target, "max_latency_ms", None) is not None or reward_config.compression == "latency"):
        # "faster" against the teacher timed beside it, as the progress lines and the report say it
        said += f", {timed:.3f} ms" + (f", {1 / rec['latency_ratio']:.1f}x faster" if rec.get("latency_ratio") else "")
    return said


FAR_BELOW = 10.0  # points below the teacher warned of where no accuracy target held the pick


def far_below_said(limits: bool, below: float, below_test: float | None = None) -> str | None:
    """A warning for a student picked without an accuracy target (with size or latency `limits`, or
    none) more than FAR_BELOW points below the teacher on validation (`below`; `below_test` on test,
    where measured); else None. Export, the search's last line and the report all say it (helper-47:
    24.5 points; helper-91: 23 points, said by export alone)."""
    if below <= FAR_BELOW:
        return None
    ask = "looser limits, or target.max_accuracy_drop, ask" if limits else "target.max_accuracy_drop asks"
    test = f" ({below_test:.2f} on test)" if below_test is not None else ""
    return (f"warning: this student is {below:.2f} points below the teacher on validation{test}, with no accuracy "
            f"target to hold it: {ask} for a usable one")


def check_margin(margin: float) -> None:
    if not (math.isfinite(margin) and margin >= 0):
        raise RunError(f"--margin: expected a number of points >= 0, got {margin:g}")


def margin_of(target, margin: float | None) -> float:
    """The margin a pick uses: `margin` when given (`n2n export --margin`), else the run's
    target.margin, which applies only to an accuracy target and at most all of it (past that it
    would ask for students above the teacher: `max_accuracy_drop: 0` under the default margin)."""
    if margin is not None:
        return margin
    if target is None or target.max_accuracy_drop is None:
        return 0.0
    return min(target.margin, target.max_accuracy_drop)


def choose(records: list[dict], target, reward_config: RewardConfig, teacher_accuracy: float,
           early_stop: bool, where: str, key: str | None = None, rank: int | None = None,
           margin: float | None = None) -> tuple[dict, str]:
    """The candidate to export and why. By default the smallest finalist that meets `target` (an
    n2n.config.TargetConfig; the finalists' longer distillation ranks students better than the
    search's brief one; the most accurate where the target sets size or latency limits alone),
    and when none meets it the best finalist (else candidate) by reward, said with NONE_MEETS (export
    writes that one only when asked, n2n.export.choose); `key` or `rank`
    (1 = best reward) pick any. `margin` (points; default: target.margin): the accuracy target must
    be met with that much to spare on validation, where the smallest of several finalists is the one
    most flattered by its noise (the winner's curse); when none does, the one that meets the target
    with the most to spare. Only candidates that `finished` can be chosen; `where` names the run in errors."""
    if margin is not None:  # asked for on the command line
        check_margin(margin)
        if margin and (key is not None or rank is not None):
            raise RunError("--margin: a margin applies to the default pick, not to --key or --rank; give one of them")
        if margin and (target is None or target.max_accuracy_drop is None):
            raise RunError(f"--margin: expected a run with an accuracy target (target.max_accuracy_drop), {where} has none")
    margin = margin_of(target, margin)
    ranked = by_reward((r for r in records if r["failure"] is None and r["reward"] > -1), reward_config)
    if not ranked:
        scored = sum(r["failure"] is None for r in records)
        walls = [f"reward.{k}" for k in ("max_params", "min_accuracy") if getattr(reward_config, k) is not None]
        outside = (f"outside the reward's walls ({', '.join(walls)}) or " if walls else "") + \
            f"no smaller than the teacher in {reward_config.compression}"
        why = (f"every candidate evaluated ({scored}) scored -1: {outside}" if scored
               else "no candidate has been evaluated successfully yet")
        raise RunError(f"{where}: {why}; nothing to export")
    done = [r for r in ranked if finished(r, early_stop)]
    if not done:
        raise RunError(f"{where}: every candidate was stopped early (without saving weights); nothing to export")
    if key is not None:
        match = [r for r in done if r["key"] == key]
        if not match:
            raise RunError(f"--key {key}: expected the key of a candidate in {where}/candidates.json that finished")
        return match[0], f"--key {key}"
    if rank is not None:
        if not 1 <= rank <= len(ranked):
            raise RunError(f"--rank: expected 1..{len(ranked)} (candidates by reward), got {rank}")
        if ranked[rank - 1] not in done:
            raise RunError(f"--rank {rank}: that candidate was stopped early and saved no weights")
        return ranked[rank - 1], f"--rank {rank} by reward"
    finalists = [r for r in done if r["stage"] == "finalists"]
    pool, what = (finalists, "finalist") if finalists else (done, "candidate")
    if target is not None and target.is_set():
        # finalists first; where none meets the target, the stages' candidates (helper-40: a finalist
        # whose longer distillation fell 6 points below its brief one's shipped 7.6 points past the
        # target while its own stage candidate, within it, was passed over)
        pools = [(pool, what)] + ([([r for r in done if r["stage"] != "finalists"], "candidate")] if finalists else [])
        for among, called in pools:
            picked = _by_target(among, called, target, reward_config, teacher_accuracy, margin)
            if picked is not None:
                best, why = picked
                if among is pool:
                    return best, why
                # its own finalist, the same student distilled longer, missed the target (helper-91: unsaid, the
                # line read as a clean pick)
                twin = next((r for r in finalists if r["key"].split("@")[0] == best["key"]), None)
                longer = (f" (its own finalist, distilled {twin['epochs']} epochs, missed the target: "
                          f"{'; '.join(target.misses(twin, teacher_accuracy))}; the brief figures may flatter it)"
                          if twin else "")
                return best, f"no finalist meets the target; among the stages' candidates, {why}{longer}"
        return pool[0], f"{NONE_MEETS}; the best {what} by reward"
    stopped = "" if finalists or pool[0] is ranked[0] else " that finished (the best was stopped early, without weights)"
    return pool[0], f"the best {what} by reward{stopped}"


def _by_target(pool: list[dict], what: str, target, reward_config: RewardConfig, teacher_accuracy: float,
               margin: float) -> tuple[dict, str] | None:
    """The candidate of `pool` (each a `what`) the target picks, and why, or None if none meets it:
    the smallest within an accuracy target (with `margin` to spare when one does), the most accurate
    within size limits alone."""
    limits_alone = target.max_accuracy_drop is None
    spared = [r for r in pool if target.met_by(r, teacher_accuracy, margin)]
    if spared:
        best = min(spared, key=lambda r: (-r["accuracy"], size_of(r, reward_config)) if limits_alone
                   else (size_of(r, reward_config), -r["accuracy"]))
        return best, f"the {'most accurate' if limits_alone else 'smallest'} {what} that meets the target" + \
            (f" with {points(margin)} to spare on validation" if margin else "")
    meeting = [r for r in pool if target.met_by(r, teacher_accuracy)]
    if meeting:  # the most to spare: a larger margin never picks a student with less of it
        safest = max(meeting, key=lambda r: (r["accuracy"], -size_of(r, reward_config)))
        return safest, f"no {what} meets the target with {points(margin)} to spare; {SHORT_OF_MARGIN}"
    return None
