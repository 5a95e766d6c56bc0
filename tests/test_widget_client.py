"""The protocol client (``clipbranches_widgets.testing.widget_client``) against a real class-mode server.

Two protocol visitors at once on ``python -m clipbranches_widgets serve --visitors 2``: each gets
the search's 60 tiles, whose captions name the query (the demo catalog's ground truth), and a
fine-tuned answer; then a Chromium visitor on the same server must see the same first grid.
The wire formats are checked on their own, without a server.
"""

import asyncio
import json
import os
import time

from dashboard_driver import CHROMIUM, CHROMIUM_ARGS, CLASS_QUERY, voila_server, wait_until

from clipbranches_widgets.testing.widget_client import (
    WidgetClient, _pack_json, _pack_v1, _unpack_json, _unpack_v1, parse_voila_page, run_protocol_class)


def test_the_wire_formats_round_trip():
    msg = {"header": {"msg_id": "1", "msg_type": "comm_msg"}, "parent_header": {"msg_id": "0"}, "metadata": {},
           "content": {"comm_id": "c", "data": {"method": "update", "state": {"x": 1}, "buffer_paths": [["b"]]}},
           "buffers": [b"\x00\x01binary"]}
    for pack, unpack in ((_pack_v1, _unpack_v1), (_pack_json, _unpack_json)):
        back = unpack(pack("iopub", msg))
        assert back["channel"] == "iopub"
        assert {k: back[k] for k in msg} == msg
    plain = {**msg, "buffers": []}
    assert isinstance(_pack_json("shell", plain), str) and _unpack_json(_pack_json("shell", plain))["content"] == msg["content"]


def test_a_voila_page_gives_its_kernel_and_widget():
    config = {"baseUrl": "/", "kernelId": "k-1"}
    output = {"output_type": "execute_result", "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m1"}}}
    page = (f'<script id="jupyter-config-data" type="application/json">\n{json.dumps(config)}\n</script>'
            f'<script type="application/vnd.voila.cell-output+json">\n{json.dumps(output)}\n</script>')
    got = parse_voila_page(page)
    assert got["kernel_id"] == "k-1" and got["root_models"] == ["m1"] and got["errors"] == []


def _words(query):
    return [w for w in query.lower().split() if len(w) > 2]


async def _chromium_first_grid(url):
    """One Chromium visitor: the ids of its first grid for CLASS_QUERY, in order."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.route("**/*", lambda route: route.abort()
                             if not route.request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                             else route.continue_())
            await page.goto(url, timeout=120_000)
            await page.fill(".cb-query input", CLASS_QUERY, timeout=120_000)
            await page.click(".cb-search")
            await wait_until(page, "document.querySelectorAll('.cb-tile').length >= 60")
            return await page.eval_on_selector_all(".cb-tile", "els => els.map(e => Number(e.dataset.id))")
        finally:
            await browser.close()


def test_two_protocol_visitors_at_once_and_a_browser_agree(tmp_path):
    log_path = tmp_path / "serve.log"
    with voila_server(log_path=log_path, visitors=3) as url:
        deadline = time.monotonic() + 240
        while "ready for visitors" not in log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        results = asyncio.run(run_protocol_class(url, 2, timeout=120))
        failures = [r["failed"] for r in results if "failed" in r]
        assert not failures, (failures, log_path.read_text(errors="replace")[-3000:])
        for r in results:
            assert len(r["first_ids"]) == 60 and len(set(r["first_ids"])) == 60
            # the default demo catalog's captions are its ground truth: every tile is a red star
            assert all(all(w in c.lower() for w in _words(CLASS_QUERY)) for c in r["captions"]), r["captions"]
            assert r["answer_count"] > 0 and r["answer_ids"]
            assert 0 < r["page_to_app_s"] <= r["first_grid_s"]
            assert {"page_s", "connect_s", "states_s", "search_s", "finetune_s"} <= r.keys()
        # the same query and the same marks (random_state 0) give the same grid and the same answer
        assert results[0]["first_ids"] == results[1]["first_ids"]
        assert results[0]["answer_count"] == results[1]["answer_count"]
        assert results[0]["answer_ids"] == results[1]["answer_ids"]

        # the third pooled kernel, with the legacy JSON framing: the widgets a visitor acts on are
        # found by the app's stable CSS classes, once each, under the page's own widget
        async def read():
            async with WidgetClient(url, protocol="json", timeout=120) as client:
                assert client.root is not None and "cb-app" in client.root.dom_classes
                return {cls: client.find(cls).name for cls in ("cb-query", "cb-search", "cb-refine", "cb-stats-area")}

        assert asyncio.run(read()) == {"cb-query": "TextModel", "cb-search": "ButtonModel",
                                       "cb-refine": "ButtonModel", "cb-stats-area": "HTMLModel"}

        if os.path.exists(CHROMIUM):  # a browser on the same server sees the same first grid
            assert asyncio.run(_chromium_first_grid(url)) == results[0]["first_ids"]
