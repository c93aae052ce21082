// loraprep studio: selection, tag search, keyboard flow and drawing a crop override. No build step.
(function () {
  "use strict";
  const page = document.body.dataset.page;
  const readOnly = document.body.dataset.readOnly === "true";

  function typing(ev) {
    const t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function click(id) { const el = document.getElementById(id); if (el) { el.click(); return true; } return false; }
  function go(id) { const el = document.getElementById(id); if (el && el.href) { window.location.href = el.href; return true; } return false; }

  // grid: count the selection, shift-click selects a range, tag search filters the frequency list
  let lastBox = null;
  document.addEventListener("click", function (ev) {
    const box = ev.target.closest && ev.target.closest("input.sel");
    if (!box) return;
    const boxes = Array.from(document.querySelectorAll("input.sel"));
    if (ev.shiftKey && lastBox) {
      const a = boxes.indexOf(lastBox), b = boxes.indexOf(box);
      boxes.slice(Math.min(a, b), Math.max(a, b) + 1).forEach(function (x) { x.checked = box.checked; });
    }
    lastBox = box;
    updateSelection();
  });
  function updateSelection() {
    const boxes = document.querySelectorAll("input.sel");
    let n = 0;
    boxes.forEach(function (x) { x.closest(".tile").classList.toggle("selected", x.checked); if (x.checked) n++; });
    const out = document.getElementById("n-selected");
    if (out) out.textContent = String(n);
  }
  document.addEventListener("input", function (ev) {
    if (ev.target.id !== "tag-search") return;
    const v = ev.target.value.toLowerCase();
    document.querySelectorAll("#freq li").forEach(function (li) { li.style.display = li.dataset.tag.indexOf(v) >= 0 ? "" : "none"; });
  });
  document.body.addEventListener("htmx:afterSwap", updateSelection);

  // keyboard flow
  document.addEventListener("keydown", function (ev) {
    if (typing(ev)) {
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    const k = ev.key;
    const ctrl = ev.ctrlKey || ev.metaKey;
    if (!readOnly && ((ctrl && k.toLowerCase() === "z" && ev.shiftKey) || (!ctrl && k === "y"))) { ev.preventDefault(); click("redo"); return; }
    if (!readOnly && ((ctrl && k.toLowerCase() === "z") || (!ctrl && k === "z"))) { ev.preventDefault(); click("undo"); return; }
    if (ctrl || ev.altKey) return;
    if (page === "image") {
      if (k === "j" || k === "ArrowRight") go("next");
      else if (k === "k" || k === "ArrowLeft") go("prev");
      else if (k === "n") go("next-flagged");
      else if (k === "g") go("back");
      else if (k === "a") click("accept");
      else if (k === "x") click("reject");
      else if (k === "e") { const t = document.getElementById("caption-text"); if (t) { ev.preventDefault(); t.focus(); } }
      else return;
      ev.preventDefault();
    } else if (page === "grid") {
      if (k === "/") { ev.preventDefault(); document.getElementById("q").focus(); }
      else if (k === "j" || k === "Enter") { const a = document.querySelector(".tile a.thumb"); if (a) window.location.href = a.href; }
    }
  });

  // chips: drag one onto another to move it there (the trigger chip stays pinned first)
  let dragged = null;
  document.addEventListener("dragstart", function (ev) {
    const chip = ev.target.closest && ev.target.closest(".chip[draggable=true]");
    if (!chip) return;
    dragged = chip;
    ev.dataTransfer.effectAllowed = "move";
    ev.dataTransfer.setData("text/plain", chip.dataset.tag);
  });
  document.addEventListener("dragover", function (ev) {
    if (dragged && ev.target.closest && ev.target.closest(".chip")) ev.preventDefault();
  });
  document.addEventListener("drop", function (ev) {
    const onto = ev.target.closest && ev.target.closest(".chip");
    if (!dragged || !onto || onto === dragged) { dragged = null; return; }
    ev.preventDefault();
    htmx.ajax("POST", "/api/tag", { target: "#caption", swap: "outerHTML", values: {
      id: dragged.dataset.id, op: "move", tag: dragged.dataset.tag, to: onto.dataset.index, version: dragged.dataset.version } });
    dragged = null;
  });

  // drawing a crop override on the source image
  const svg = document.getElementById("overlay");
  const stage = document.getElementById("stage");
  if (svg && stage && !readOnly) {
    const W = parseFloat(stage.dataset.w), H = parseFloat(stage.dataset.h);
    const rect = document.getElementById("drawing");
    let start = null;
    function pt(ev) {
      const r = svg.getBoundingClientRect();
      return [Math.max(0, Math.min(W, (ev.clientX - r.left) / r.width * W)), Math.max(0, Math.min(H, (ev.clientY - r.top) / r.height * H))];
    }
    function show(a, b) {
      rect.setAttribute("x", Math.min(a[0], b[0])); rect.setAttribute("y", Math.min(a[1], b[1]));
      rect.setAttribute("width", Math.abs(a[0] - b[0])); rect.setAttribute("height", Math.abs(a[1] - b[1]));
    }
    svg.addEventListener("mousedown", function (ev) { ev.preventDefault(); start = pt(ev); show(start, start); });
    svg.addEventListener("mousemove", function (ev) { if (start) show(start, pt(ev)); });
    window.addEventListener("mouseup", function (ev) {
      if (!start) return;
      const end = pt(ev), a = start;
      start = null;
      if (Math.abs(a[0] - end[0]) < 8 || Math.abs(a[1] - end[1]) < 8) { show([0, 0], [0, 0]); return; }
      htmx.ajax("POST", "/api/crop", { target: "#crop-result", swap: "innerHTML", values: {
        id: stage.dataset.id, x0: Math.min(a[0], end[0]), y0: Math.min(a[1], end[1]), x1: Math.max(a[0], end[0]), y1: Math.max(a[1], end[1]) } });
    });
    document.body.addEventListener("htmx:afterSwap", function (ev) {
      const st = document.getElementById("crop-state");
      if (!st || !st.dataset.box || st.dataset.box === "null") return;
      const b = JSON.parse(st.dataset.box);
      show([b[0], b[1]], [b[2], b[3]]);
    });
  }
})();
