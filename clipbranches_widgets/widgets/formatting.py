"""The app's words and numbers as HTML: pure functions of results, easy to test and to restyle.

Everything user text goes through ``html.escape``; the CSS classes and ``data-*`` attributes are
what the browser tests and the stylesheet (``app.css``) rely on.
"""

from __future__ import annotations

import base64
import html

import numpy as np

#: model selector labels -> SearchSession model names: "auto" (the default) plus the original's db,
#: ens, dtree, rf and a linear model
MODEL_OPTIONS = (("Automatic (best for your marks)", "auto"), ("Decision branches", "branches"),
                 ("Branch ensemble", "ensemble"), ("Linear (logistic regression)", "linear"),
                 ("Decision tree", "tree"), ("Random forest", "forest"))
#: the "Show:" toggle: what the grid holds
VIEW_OPTIONS = (("answer", "answer"), ("suggestions to mark", "suggestions"))
#: notes on suggested tiles: drawn from the answer (confirm it) or from outside it (explore)
NOTE_IN_ANSWER = "in answer: right?"
NOTE_EXPLORE = "not in answer: missed?"


def data_link(text: str, filename: str, mime: str) -> str:
    """A download link holding ``text`` (a data: URL), with the file's name and size."""
    payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
    size = len(text.encode("utf-8"))
    return (f'<a class="cb-download" download="{html.escape(filename)}" '
            f'href="data:{mime};charset=utf-8;base64,{payload}" data-filename="{html.escape(filename)}">'
            f'⬇ Download {html.escape(filename)}</a> <span style="color:#777">({size:,} bytes)</span>')


def ms(seconds) -> str:
    """Seconds as "12.3 ms"."""
    return f"{1000.0 * float(seconds):.1f} ms"


def model_label(name: str) -> str:
    """The selector's label of a model family ("linear" -> "Linear (logistic regression)")."""
    return dict((v, k) for k, v in MODEL_OPTIONS).get(name, name)


def estimate_html(estimate: dict) -> str:
    """The answer's estimated precision / recall as ``<div class="cb-estimate" ...>``, or "" without one."""
    if not estimate or estimate.get("precision") is None or estimate.get("recall") is None:
        return ""
    p, r = float(estimate["precision"]), float(estimate["recall"])
    f1 = float(estimate.get("f1", 0.0))
    positives = estimate.get("positives")
    matches = "" if positives is None else f" &middot; about {float(positives):,.0f} matches in the catalog"
    return (f'<div class="cb-estimate" data-precision="{p:.4f}" data-recall="{r:.4f}" data-f1="{f1:.4f}">'
            f"Estimated precision <b>{p:.2f}</b> &middot; recall <b>{r:.2f}</b>{matches} "
            f'<span class="cb-estimate-method">(estimate: {html.escape(str(estimate.get("method", "")))})'
            f"</span></div>")


def query_words(query: dict | None) -> str:
    """A query in words: the quoted text, "item 12", "the uploaded picture" or "your marks"."""
    if not query:
        return "your marks"
    if query.get("type") == "text":
        return f"“{html.escape(query['text'])}”"
    return f"item {query['item_id']}" if query.get("item_id") is not None else "the uploaded picture"


def choice_html(result) -> str:
    """Which model family answered and why (``result.selection["reason"]``)."""
    name = html.escape(model_label(result.model_name))
    reason = html.escape(str((result.selection or {}).get("reason", "")))
    how = "chosen automatically" if result.requested_model == "auto" else "as selected"
    return (f'<div class="cb-model-choice" data-model="{html.escape(result.model_name)}">Model: <b>{name}</b>, '
            f"{how}" + (f" ({reason})" if reason else "") + "</div>")


def stats_html(count: int, body: str, view: str = "answer") -> str:
    """The statistics box around ``body``, with the answer's size and the grid's view as data attributes."""
    return f'<div class="cb-stats" data-count="{int(count)}" data-view="{view}">{body}</div>'


def search_stats_html(result) -> str:
    """Statistics of a text or picture search (a QueryResult)."""
    t = result.timings
    total = sum(float(v) for v in t.values())
    body = (f'<span class="cb-view-name">Showing the answer:</span> <b>{len(result)}</b> results for '
            f"{query_words(result.query)} &middot; query time {total:.3f} s"
            f'<div class="cb-timings">encode {ms(t.get("encode", 0))} &middot; nn {ms(t.get("nn", 0))}</div>')
    return stats_html(len(result), body)


def refine_stats_html(result) -> str:
    """Statistics of a refine round (a RefineResult): the answer, the model chosen and why, the
    estimate, where the time went, what was trained on."""
    t = result.timings
    boxes = "n/a" if result.n_boxes is None else str(result.n_boxes)
    method = result.stats.get("method")
    body = (f'<span class="cb-view-name">Showing the answer:</span> <b>{result.count:,}</b> results '
            f"({html.escape(model_label(result.model_name))}) &middot; query time "
            f"{float(t.get('total', 0)):.3f} s"
            + choice_html(result) + estimate_html(result.estimate)
            + f'<div class="cb-timings">encode {ms(t.get("encode", 0))} &middot; nn {ms(t.get("nn", 0))} '
            f'&middot; sampling {ms(t.get("sampling", 0))} &middot; cv {ms(t.get("cv", 0))} '
            f'&middot; train {ms(t.get("train", 0))} &middot; apply {ms(t.get("apply", 0))} '
            f'&middot; estimate {ms(t.get("estimate", 0))}</div>'
            f'<div class="cb-counts">boxes: {boxes}'
            + (f" &middot; search: {html.escape(str(method))}" if method else "")
            + f" &middot; marks used: {result.n_positives} positive, {result.n_negatives} negative"
            f" &middot; random negatives: {result.n_random_negatives} "
            f"({html.escape(result.negatives_source)}) &middot; seed {result.random_state}</div>")
    return stats_html(result.count, body)


def suggestions_stats_html(page, answer) -> str:
    """Statistics of a page of suggestions to mark, for the current ``answer`` (a search or a refine result)."""
    in_answer = np.asarray(page.in_answer, bool)
    n_in, n_out = int(in_answer.sum()), int((~in_answer).sum())
    refined = answer is not None and hasattr(answer, "model_name")
    of = query_words((page.query or {}).get("of_query"))
    if refined:
        what = (f"the answer: {answer.count:,} results ({html.escape(model_label(answer.model_name))}) "
                f"for {of}")
    else:
        what = f"the search for {of} (no fine-tuning yet)"
    body = (f'<span class="cb-view-name">Showing suggestions to mark:</span> <b>{len(page)}</b> items, '
            f"{n_in} from the answer (<i>{NOTE_IN_ANSWER}</i>), {n_out} from outside it "
            f"(<i>{NOTE_EXPLORE}</i>). Mark them and press Fine-tune: the next estimate uses them."
            f'<div class="cb-counts">about {what} &middot; picked in '
            f'{ms(page.timings.get("suggest", 0))}</div>'
            + (choice_html(answer) + estimate_html(answer.estimate) if refined else ""))
    count = answer.count if refined else (len(answer) if answer is not None else 0)
    return stats_html(count, body, view="suggestions")
