"""The HTML of the annotation app's pages. Every value is escaped; the pages hold no inline script or style
(the Content Security Policy forbids both), and the item itself is drawn by /static/annotate.js."""

from __future__ import annotations

import html

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="/static/style.css">{extra}</head>
<body>"""


def _page(title: str, body: str, extra: str = "") -> str:
    return _HEAD.format(title=html.escape(title), extra=extra) + body + "</body></html>\n"


def _signed_in_header(name: str, csrf: str) -> str:
    return (f'<header><span>Signed in as <strong>{html.escape(name)}</strong></span>'
            f'<span id="progress" aria-live="polite"></span>'
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" value="{html.escape(csrf)}">'
            f'<button type="submit">Sign out</button></form></header>')


def login(nonce: str, message: str = "") -> str:
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return _page("Sign in", f"""<main class="narrow"><h1>Sign in</h1>{note}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(nonce)}">
<input type="text" name="username" autocomplete="username" hidden>
<label for="token">Annotator token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form></main>""")


def annotate(name: str, csrf: str) -> str:
    return _page("Annotate", _signed_in_header(name, csrf) + """
<main>
<section id="task" aria-live="polite"><p>Loading…</p></section>
<details class="help"><summary>Keyboard</summary>
<p>Ranking: press the numbers of the responses from best to worst (the last one places itself), or drag the
entries of <em>Your ranking</em>. Backspace undoes a step, Escape starts over, Shift+number marks a response
unsafe, Enter submits, S skips.</p><p>A/B: 1 or 2 picks the better response, T says they are equally good,
Enter submits, S skips. Keys typed into the comment box stay in the comment.</p></details>
</main>""", f'<meta name="csrf-token" content="{html.escape(csrf)}"><script src="/static/annotate.js" defer></script>')


def admin(name: str, csrf: str, summary: dict) -> str:
    item_rows = "".join(
        f"<tr><td>{html.escape(r['kind'])}</td><td>{r['items']}</td><td>{r['complete_items']}</td>"
        f"<td>{r['labels']} / {r['labels_needed']}</td></tr>" for r in summary["items"])
    people_rows = "".join(
        f"<tr><td>{html.escape(r['name'])}{' (admin)' if r['admin'] else ''}</td><td>{r['labelled']}</td>"
        f"<td>{r['skipped']}</td></tr>" for r in summary["annotators"])
    return _page("Annotation progress", _signed_in_header(name, csrf) + f"""
<main><h1>Annotation progress</h1>
<table><caption>Items</caption><tr><th scope="col">Kind</th><th scope="col">Items</th>
<th scope="col">Complete</th><th scope="col">Labels</th></tr>{item_rows}</table>
<table><caption>Annotators</caption><tr><th scope="col">Name</th><th scope="col">Labelled</th>
<th scope="col">Skipped</th></tr>{people_rows}</table>
<p>Export with <code>python -m jaxrlhf.annotate export</code>; the A/B report with
<code>python -m jaxrlhf.annotate report</code>.</p></main>""")


def error(status: int, message: str) -> str:
    return _page(f"Error {status}", f'<main class="narrow"><h1>Error {status}</h1><p role="alert">'
                                    f'{html.escape(message)}</p><p><a href="/">Back</a></p></main>')
