"""Collected figures and the markdown report (medians, ratio Strata / best peer, targets)."""

import statistics

PEERS = ("nginx", "varnish")
COLUMNS = (("strata", "Strata"), ("nginx", "nginx"), ("varnish", "Varnish"),
           ("static", "static nginx (ref)"))


class Row:
    """One figure row: a value per server (medians), which way is better, an optional target
    on the ratio Strata / best peer (or on Strata's own value), and warnings per server.

    With `rounds` (each server's value in each interleaved round, in round order) the ratio
    is the median of the rounds' own ratios: Strata against the best peer *in the same
    round*. Rounds run back to back, so they share the machine's state of the moment; a
    ratio of medians can pair a fast pass of one server with a slow pass of another."""

    def __init__(self, figure, metric, unit, values, better=None, target=None, fmt="{:,.0f}",
                 absolute=False, rounds=None):
        self.figure, self.metric, self.unit = figure, metric, unit
        self.values = values          # {"strata": x, "nginx": y, ...}; None = not measured
        self.rounds = rounds or {}    # {"strata": [x1, x2, x3], ...}; optional
        self.better = better          # "high", "low" or None (informative only)
        self.target = target          # ratio (or absolute value when absolute=True)
        self.fmt = fmt
        self.absolute = absolute
        self.flags = {}               # server -> "3 errors", "12 origin req", ...
        self.exclude = set()          # peers not comparable on this row (e.g. over budget)

    def best_peer(self):
        vals = [(self.values.get(p), p) for p in PEERS
                if self.values.get(p) is not None and p not in self.exclude]
        if not vals or self.better is None:
            return None, None
        pick = max if self.better == "high" else min
        v, p = pick(vals)
        return p, v

    def ratio(self):
        per_round = self.round_ratios()
        if per_round:
            return statistics.median(per_round)
        s = self.values.get("strata")
        p, v = self.best_peer()
        if s is None or v is None:
            return None
        return _ratio(s, v)

    def round_ratios(self):
        """Strata / the best peer of the same round, for each round ([] without rounds)."""
        if self.better is None:
            return []
        mine = self.rounds.get("strata") or []
        if not mine:
            return []
        theirs = [self.rounds[p] for p in PEERS
                  if p not in self.exclude and len(self.rounds.get(p) or []) == len(mine)]
        pick = max if self.better == "high" else min
        out = []
        for i, s in enumerate(mine):
            peers = [r[i] for r in theirs if r[i] is not None]
            if s is None or not peers:
                return []
            r = _ratio(s, pick(peers))
            if r is None:
                return []
            out.append(r)
        return out

    def met(self):
        if self.target is None:
            return None
        if self.absolute:
            s = self.values.get("strata")
            if s is None:
                return None
            return s >= self.target if self.better == "high" else s <= self.target
        r = self.ratio()
        if r is None:
            return None
        return r >= self.target if self.better == "high" else r <= self.target

    def cell(self, server):
        v = self.values.get(server)
        text = "–" if v is None else self.fmt.format(v)
        if server in self.flags:
            text += f" ⚠ {self.flags[server]}"
        return text

    def target_text(self):
        if self.target is None:
            return ""
        op = "≥" if self.better == "high" else "≤"
        if self.absolute:
            return f"Strata {op} {self.fmt.format(self.target)}"
        return f"{op} {self.target:g}×"


def _figure_number(row):
    """"Figure 3: ..." -> 3, "Figures 1-2 ..." -> 1 (other names sort last)."""
    try:
        return int(row.figure.split()[1].split("-")[0].rstrip(":"))
    except (IndexError, ValueError):
        return 99


def _ratio(s, v):
    if v == 0:
        return None if s != 0 else 1.0
    return s / v


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Results:
    def __init__(self):
        self.rows = []
        self.notes = []      # free-text lines (what was measured how, anomalies)
        self.warnings = []   # things that look wrong (errors, origin requests during hits)
        self.failures = []   # crashes / servers that did not start

    def add(self, row):
        self.rows.append(row)
        return row

    def warn(self, text):
        self.warnings.append(text)
        print(f"  WARNING: {text}", flush=True)

    def fail(self, text):
        self.failures.append(text)
        print(f"  FAILURE: {text}", flush=True)

    def markdown(self, header_lines):
        out = list(header_lines)
        rows = sorted(self.rows, key=_figure_number)  # stable: keeps each figure's order
        targeted = [r for r in rows if r.target is not None]
        if targeted:
            out += ["", "## Targets (Strata / best of nginx and Varnish)", "",
                    "Values are medians over the rounds. Where a row lists rounds, its ratio "
                    "is the median of the rounds' own ratios (Strata / the best peer of the "
                    "same round): the machine's drift between passes moves it less than a "
                    "ratio of medians.", "",
                    "| figure | metric | Strata | best peer | ratio | rounds | target | met |",
                    "|---|---|---|---|---|---|---|---|"]
            for r in targeted:
                p, v = r.best_peer()
                ratio = r.ratio()
                met = r.met()
                out.append(
                    f"| {r.figure} | {r.metric} ({r.unit}) | {r.cell('strata')} | "
                    f"{'–' if p is None else dict(COLUMNS)[p] + ' ' + r.fmt.format(v)} | "
                    f"{'–' if ratio is None else f'{ratio:.2f}×'} | "
                    f"{' '.join(f'{x:.2f}' for x in r.round_ratios()) or '–'} | "
                    f"{r.target_text()} | "
                    f"{'–' if met is None else ('yes' if met else '**no**')} |")
        figures = []
        for r in rows:
            if r.figure not in figures:
                figures.append(r.figure)
        for fig in figures:
            fig_rows = [r for r in rows if r.figure == fig]
            cols = [(k, t) for k, t in COLUMNS
                    if any(r.values.get(k) is not None for r in fig_rows)]
            out += ["", f"## {fig}", ""]
            if any(r.round_ratios() for r in fig_rows):
                out += ["Values are medians of the rounds; the last column is the median of "
                        "the rounds' own ratios, so it need not equal the quotient of the "
                        "medians beside it.", ""]
            out += ["| metric | " + " | ".join(t for _, t in cols) + " | Strata / best peer |",
                    "|---|" + "---|" * len(cols) + "---|"]
            for r in fig_rows:
                ratio = r.ratio()
                out.append(f"| {r.metric} ({r.unit}) | "
                           + " | ".join(r.cell(k) for k, _ in cols)
                           + f" | {'–' if ratio is None else f'{ratio:.2f}×'} |")
        if self.notes:
            notes = sorted(self.notes, key=lambda n: _figure_number(Row(n, "", "", {})))
            out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
        out += ["", "## Warnings", ""]
        out += [f"- {w}" for w in self.warnings] or ["- none (zero errors on every row; zero "
                                                    "origin requests during every hit run)"]
        if self.failures:
            out += ["", "## Failures", ""] + [f"- {f}" for f in self.failures]
        return "\n".join(out) + "\n"
