// Front end of ImageGrid (image_grid.py): one anywidget renders the whole grid.
// Stable hooks for tests and automation: .cb-grid, .cb-tile[data-id][data-label] (and
// [data-note] + .cb-note on a tile with a note), .cb-all-pos, .cb-all-neg, .cb-all-none, .cb-more.
// Label changes only touch data-label attributes; <img> elements are rebuilt only when
// `tiles` changes to other tiles (Python filling in thumbnails one page ahead only replaces the
// tiles that gain a picture), and "Load more" only appends, so 500 tiles stay cheap.

const NEXT = { none: "pos", pos: "neg", neg: "none" };

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(3) : "";
}

function button(cls, text, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `cb-button ${cls}`;
  b.textContent = text;
  b.title = title;
  return b;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "cb-image-grid";
  const grid = document.createElement("div");
  grid.className = "cb-grid";
  const bar = document.createElement("div");
  bar.className = "cb-bar";
  const allPos = button("cb-all-pos", "All positive", "Mark every shown tile positive");
  const allNeg = button("cb-all-neg", "All negative", "Mark every shown tile negative");
  const allNone = button("cb-all-none", "All none", "Clear the labels of every shown tile");
  const more = button("cb-more", "Load more", "Show more tiles");
  const count = document.createElement("span");
  count.className = "cb-count";
  bar.append(allPos, allNeg, allNone, more, count);
  root.append(grid, bar);
  el.append(root);

  // id (as a string, like the keys of `labels`) -> tile element, for the tiles in the DOM.
  let tileEls = new Map();

  const labelOf = (id) => model.get("labels")[id] || "none";

  // The tile's note (the `notes` trait): data-note plus a visible strip; "" removes both.
  function setNote(t, text) {
    let span = t.querySelector(".cb-note");
    if (!text) {
      delete t.dataset.note;
      if (span) span.remove();
    } else {
      t.dataset.note = text;
      if (!span) {
        span = document.createElement("span");
        span.className = "cb-note";
        t.append(span);
      }
      span.textContent = text;
    }
    t.title = t.dataset.note ? `${t.cbHint}\n${t.dataset.note}` : t.cbHint;
  }

  function makeTile(tile, before) {
    const id = String(tile.id);
    const t = document.createElement("div");
    t.className = "cb-tile";
    t.tabIndex = 0;
    t.dataset.id = id;
    t.dataset.label = labelOf(id);
    if (before.has(tile.id)) t.dataset.before = "";
    const score = formatScore(tile.score);
    const caption = tile.caption || `#${id}`;
    t.cbHint = score ? `${caption}\nscore ${score}` : caption;
    t.title = t.cbHint;
    if (tile.src) {
      const img = document.createElement("img");
      img.src = tile.src;
      img.alt = caption;
      img.draggable = false;
      img.loading = "lazy";
      img.decoding = "async";
      t.append(img);
    } else {
      const ph = document.createElement("span");
      ph.className = "cb-placeholder";
      ph.textContent = caption;
      t.append(ph);
    }
    if (score) {
      const s = document.createElement("span");
      s.className = "cb-score";
      s.textContent = score;
      t.append(s);
    }
    const similar = document.createElement("button");
    similar.className = "cb-similar";
    similar.type = "button";
    similar.tabIndex = -1; // the tile itself is focusable; "s" does the same from the keyboard
    similar.textContent = "\u2248";
    similar.title = "More like this (s)";
    t.append(similar);
    setNote(t, model.get("notes")[id] || "");
    return t;
  }

  function updateBar() {
    const total = model.get("tiles").length;
    const shown = Math.min(model.get("shown"), total);
    const disabled = model.get("disabled");
    more.hidden = shown >= total;
    more.disabled = disabled || shown >= total;
    for (const b of [allPos, allNeg, allNone]) b.disabled = disabled || shown === 0;
    count.textContent = `${shown} of ${total} shown`;
    root.classList.toggle("cb-disabled", disabled);
  }

  // Bring the DOM to the first `shown` tiles; appends or trims unless `rebuild` is set.
  function syncTiles(rebuild) {
    const tiles = model.get("tiles");
    const shown = Math.min(model.get("shown"), tiles.length);
    if (rebuild) {
      grid.replaceChildren();
      tileEls = new Map();
    }
    while (grid.children.length > shown) {
      const last = grid.lastElementChild;
      tileEls.delete(last.dataset.id);
      last.remove();
    }
    if (grid.children.length < shown) {
      const before = new Set(model.get("labelled_before"));
      const frag = document.createDocumentFragment();
      for (const tile of tiles.slice(grid.children.length, shown)) {
        const t = makeTile(tile, before);
        tileEls.set(t.dataset.id, t);
        frag.append(t);
      }
      grid.append(frag);
    }
    updateBar();
  }

  // `tiles` changed: the same tiles with thumbnails filled in (Python encodes them one page
  // ahead of "Load more") only swap those tiles; anything else rebuilds the grid.
  let lastTiles = model.get("tiles");
  const sameButSrc = (a, b) => a.length === b.length && a.every((t, k) =>
    t.id === b[k].id && t.caption === b[k].caption && t.score === b[k].score);

  function onTiles() {
    const tiles = model.get("tiles");
    const previous = lastTiles;
    lastTiles = tiles;
    if (!sameButSrc(tiles, previous)) {
      syncTiles(true);
      return;
    }
    const before = new Set(model.get("labelled_before"));
    const els = [...grid.children];
    els.forEach((t, k) => {
      if (tiles[k].src === previous[k].src) return;
      const fresh = makeTile(tiles[k], before);
      tileEls.set(fresh.dataset.id, fresh);
      t.replaceWith(fresh);
    });
    updateBar();
  }

  function syncLabels() {
    const labels = model.get("labels");
    for (const [id, t] of tileEls) {
      const label = labels[id] || "none";
      if (t.dataset.label !== label) t.dataset.label = label;
    }
  }

  function syncBefore() {
    const before = new Set(model.get("labelled_before").map(String));
    for (const [id, t] of tileEls) {
      if (before.has(id)) t.dataset.before = "";
      else delete t.dataset.before;
    }
  }

  function syncNotes() {
    const notes = model.get("notes");
    for (const [id, t] of tileEls) {
      const text = notes[id] || "";
      if ((t.dataset.note || "") !== text) setNote(t, text);
    }
  }

  function syncLayout() {
    root.style.setProperty("--cb-columns", model.get("columns"));
    root.style.setProperty("--cb-tile-size", `${model.get("tile_size")}px`);
  }

  // Every edit goes through `labels`: Python callbacks hear it, and change:labels repaints.
  function setLabels(ids, label) {
    if (model.get("disabled") || ids.length === 0) return;
    const labels = { ...model.get("labels") }; // a new object, so the change is detected
    for (const id of ids) {
      if (label === "none") delete labels[id];
      else labels[id] = label;
    }
    model.set("labels", labels);
    model.save_changes();
  }

  const shownIds = () => [...tileEls.keys()];
  const tileOf = (event) => event.target.closest(".cb-tile");

  // Delegated handlers: two listeners for the whole grid, however many tiles.
  // "More like this" is a request to Python (a custom message), not a state change.
  const askSimilar = (t) => {
    if (!model.get("disabled")) model.send({ type: "similar", id: Number(t.dataset.id) });
  };

  function onClick(event) {
    const t = tileOf(event);
    if (!t) return;
    if (event.target.closest(".cb-similar")) askSimilar(t);
    else setLabels([t.dataset.id], NEXT[t.dataset.label] || "pos");
  }

  function onKey(event) {
    const t = tileOf(event);
    if (!t || event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    let label;
    if (key === "p") label = "pos";
    else if (key === "n") label = "neg";
    else if (key === "0" || key === "backspace") label = "none";
    else if (key === " " || key === "enter") label = NEXT[t.dataset.label] || "pos";
    else if (key === "s") {
      event.preventDefault();
      event.stopPropagation();
      askSimilar(t);
      return;
    } else return;
    event.preventDefault(); // no page scroll on space, no navigation on backspace
    event.stopPropagation(); // keep JupyterLab from treating the key as a notebook shortcut
    setLabels([t.dataset.id], label);
  }

  grid.addEventListener("click", onClick);
  grid.addEventListener("keydown", onKey);
  allPos.addEventListener("click", () => setLabels(shownIds(), "pos"));
  allNeg.addEventListener("click", () => setLabels(shownIds(), "neg"));
  allNone.addEventListener("click", () => setLabels(shownIds(), "none"));
  more.addEventListener("click", () => {
    const total = model.get("tiles").length;
    model.set("shown", Math.min(model.get("shown") + model.get("page_size"), total));
    model.save_changes();
  });

  // What the app keeps in this browser (its session), so that a reload of the page finds it.
  const storageName = () => "clipbranches:" + model.get("storage_key");
  function restore() {
    if (!model.get("storage_key")) return;
    let state = null;
    try { state = window.localStorage.getItem(storageName()); } catch (e) { return; }
    if (state) model.send({ type: "restore", key: model.get("storage_key"), state });
  }
  function onMessage(msg) {
    if (!msg || msg.type !== "store" || msg.key !== model.get("storage_key")) return;
    try { window.localStorage.setItem(storageName(), msg.state); } catch (e) { /* full or blocked */ }
  }

  // One event name per entry: the model anywidget hands us may not split space-separated names.
  const handlers = [
    ["change:storage_key", restore],
    ["msg:custom", onMessage],
    ["change:tiles", onTiles],
    ["change:shown", () => syncTiles(false)],
    ["change:labels", syncLabels],
    ["change:labelled_before", syncBefore],
    ["change:notes", syncNotes],
    ["change:columns", syncLayout],
    ["change:tile_size", syncLayout],
    ["change:disabled", updateBar],
  ];
  for (const [event, handler] of handlers) model.on(event, handler);

  syncLayout();
  syncTiles(true);
  restore();

  return () => {
    for (const [event, handler] of handlers) model.off(event, handler);
  };
}

export default { render };
