"""The page at ``/``: pick an image, see the predicted overlay and the area of each class.

The page is self-contained (inline style and script, no external URL), so it works on a machine
without internet access. Its script posts the chosen file to ``predict?format=json&overlay=true``
(relative, so the page also works behind a path prefix) and shows the answer. While it works,
``<body data-state>`` is ``busy``; then ``done`` once the overlay has loaded, or ``error`` with the
service's message in ``#status``.

When the service needs an API key the page is still served without it, but carries no model data
(its inlined model description is ``null``). It shows a password field, ``#api-key``, whose value
its script sends as ``Authorization: Bearer <key>``: first to ``model`` (for the class names and
colours), then with each upload. The key stays in the page: it is not stored or put in a URL.
"""

from __future__ import annotations

import json
from typing import Any

_MODEL_INFO = "__MODEL_INFO__"
_KEY_ROW = "__KEY_ROW__"
_KEY_FIELD = (
    '<p><label>API key: <input type="password" id="api-key" autocomplete="off" '
    'spellcheck="false"></label></p>'
)

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>unetkit segmentation</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem;
       color: #222; }
#status { min-height: 1.5em; }
body[data-state="error"] #status { color: #b00020; }
#overlay { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
table { border-collapse: collapse; margin-top: 1rem; }
th, td { padding: 0.25rem 0.75rem; border-bottom: 1px solid #ddd; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: -0.1em; border: 1px solid #888; }
</style>
</head>
<body data-state="idle">
<h1>unetkit segmentation</h1>
<p id="about"></p>
__KEY_ROW__
<p><label>Image: <input type="file" id="file" accept="image/*,.tif,.tiff"></label></p>
<p id="status" role="status"></p>
<p><img id="overlay" alt="the image with the predicted classes tinted" hidden></p>
<p><a id="mask-link" download="mask.png" hidden>Download the class-index mask (PNG)</a></p>
<table id="areas" hidden>
<thead><tr><th>Class</th><th>Pixels</th><th>Share</th></tr></thead>
<tbody></tbody>
</table>
<script type="application/json" id="model-info">__MODEL_INFO__</script>
<script>
"use strict";
let info = JSON.parse(document.getElementById("model-info").textContent);
const fileInput = document.getElementById("file");
const keyInput = document.getElementById("api-key");
const statusLine = document.getElementById("status");
const overlay = document.getElementById("overlay");
const maskLink = document.getElementById("mask-link");
const areas = document.getElementById("areas");

function describe() {
  document.getElementById("about").textContent = info === null
    ? "This service needs an API key: enter it, then choose an image."
    : `Model ${info.model ?? "(unnamed)"}: ${info.task}, ${info.classes.length} classes ` +
      `(${info.classes.map((c) => c.name).join(", ")}); model input ` +
      `${info.input_size.join(" x ")} pixels, masks come back at each image's own size.`;
}

function setState(state, message) {
  document.body.dataset.state = state;
  statusLine.textContent = message;
}

function authorization() {
  const key = keyInput === null ? "" : keyInput.value.trim();
  return key === "" ? {} : { Authorization: `Bearer ${key}` };
}

class Refusal extends Error {}

async function ask(url, options) {
  const response = await fetch(url, { ...options, headers: authorization() });
  const answer = await response.json();
  if (!response.ok) {
    throw new Refusal(`${answer.detail} (HTTP ${response.status})`);
  }
  return answer;
}

async function loadModel() {
  if (info === null) {
    info = await ask("model", {});
    describe();
  }
}

function areaRow(area) {
  const row = document.createElement("tr");
  const name = document.createElement("td");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.backgroundColor = `rgb(${info.classes[area.id].colour.join(",")})`;
  name.append(swatch, area.name);
  const pixels = document.createElement("td");
  pixels.className = "number";
  pixels.textContent = area.pixels.toLocaleString("en");
  const share = document.createElement("td");
  share.className = "number";
  share.textContent = `${(100 * area.fraction).toFixed(2)} %`;
  row.append(name, pixels, share);
  return row;
}

function show(answer, fileName) {
  areas.tBodies[0].replaceChildren(...answer.classes.map(areaRow));
  areas.hidden = false;
  maskLink.href = `data:image/png;base64,${answer.mask_png_base64}`;
  maskLink.hidden = false;
  overlay.onload = () =>
    setState("done", `${fileName}: ${answer.width} x ${answer.height} pixels`);
  overlay.onerror = () => setState("error", "The overlay picture could not be shown.");
  overlay.src = `data:image/png;base64,${answer.overlay_png_base64}`;
  overlay.hidden = false;
}

function clear() {
  overlay.hidden = true;
  maskLink.hidden = true;
  areas.hidden = true;
}

async function segment(file) {
  clear();
  setState("busy", `Segmenting ${file.name} ...`);
  const form = new FormData();
  form.append("file", file);
  try {
    await loadModel();
    const answer = await ask("predict?format=json&overlay=true", { method: "POST", body: form });
    show(answer, file.name);
  } catch (error) {
    const reason = error instanceof Refusal ? error.message : `the request failed (${error})`;
    setState("error", `${file.name}: ${reason}`);
  }
}

describe();
fileInput.addEventListener("change", () => {
  if (fileInput.files.length > 0) {
    segment(fileInput.files[0]);
  }
});
</script>
</body>
</html>
"""


def render_page(model_info: dict[str, Any] | None, needs_key: bool = False) -> str:
    """The page's HTML, with ``model_info`` (the ``GET /model`` answer) inlined for its script.

    ``model_info`` is None when the service needs a key (the page then fetches it with the key);
    ``needs_key`` shows the key field.
    """
    inline_json = json.dumps(model_info).replace("<", "\\u003c")  # cannot close the <script>
    page = _TEMPLATE.replace(_KEY_ROW, _KEY_FIELD if needs_key else "")
    return page.replace(_MODEL_INFO, inline_json)
