"""The server's page at `/`: paste a review, see the label, a confidence bar and every class's probability;
paste several lines, get a table. One file, no external assets (it must work offline and behind a
firewall), readable on a phone. It calls the same /predict as any client, and names the model as /info does:
the folder's name and its base model, never a path on the server's disk.

"explain" asks /predict for explanations and colours each text's words as the reports do (evaluation/words.py
gives the colours, the formula and the CSS): green toward the label explained, red against it. Words are put in
the page as text nodes, never as HTML: a review may hold `<script>`."""

import json

from finetune_bert.evaluation.words import DEEPEST, NEGATIVE, POSITIVE, TIGHT_AFTER, TIGHT_BEFORE, WORDS_CSS
from finetune_bert.inference.attributions import PAIR_SEPARATOR

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>finetune-bert</title>
<style>
body { font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 760px;
       padding: 1em; color: #222; }
h1 { font-size: 1.4em; margin: .2em 0; } .note { color: #666; font-size: .9em; }
textarea { width: 100%; box-sizing: border-box; min-height: 9em; font: inherit; padding: .5em; }
input[type=password] { width: 100%; box-sizing: border-box; font: inherit; padding: .3em; }
button { font: inherit; padding: .5em 1.4em; margin: .6em 0; cursor: pointer; }
.bar { background: #eee; border-radius: 4px; height: 1.1em; overflow: hidden; }
.bar > div { background: #3b7dd8; height: 100%; }
#label { font-size: 1.5em; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin-top: .6em; font-size: .92em; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#error { color: #b00020; }
.explain { margin-left: 1em; } #why { margin-top: .8em; } .many-words { font-size: .95em; }
/*WORDS_CSS*/
</style></head><body>
<h1>finetune-bert</h1>
<p class="note" id="model">Loading the model's description&hellip;</p>
<label for="text" id="what">One text, or one text per line:</label>
<textarea id="text" placeholder="Paste a review here"></textarea>
<div id="keybox" hidden><label for="key">API key</label><input type="password" id="key" autocomplete="off"></div>
<button id="go" type="button">Classify</button>
<label class="explain" id="explainbox" title="Colour the words by how much they pushed toward the label (Integrated
 Gradients: slower than scoring)"><input type="checkbox" id="explain"> explain: colour the words</label>
<p id="error" role="alert"></p>
<section id="one" hidden aria-live="polite">
  <div><span id="label"></span> <span id="confidence" class="note"></span></div>
  <div class="bar"><div id="bar"></div></div>
  <table id="classes"></table>
  <div id="why" hidden><p class="legend" id="legend"></p><div id="words"></div></div>
</section>
<section id="many" hidden aria-live="polite"><p class="legend" id="many-legend" hidden></p><table id="rows"></table></section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }
let task = "classification", pairs = false;
const KINDS = {"classification": "labels", "multi-label": "labels, several per text", "regression": "predicts"};
fetch("info").then((r) => r.json()).then((info) => {
  task = info.task || task; pairs = !!info.text_pairs;
  $("model").textContent = info.model + (info.base_model ? " (fine-tuned from " + info.base_model + ")" : "") +
    " \\u2014 " + KINDS[task] + ": " + info.labels.join(", ") +
    (info.temperature !== 1 ? " (calibrated confidences)" : "");
  if (pairs) {
    $("what").textContent = "One pair per line, the two texts separated by |||:";
    $("text").placeholder = "A man is playing a guitar. ||| Someone plays music.";
  }
  $("keybox").hidden = !info.auth;
  const explain = info.explain || {};
  if (!explain.available) { $("explain").disabled = true; $("explainbox").title = explain.why_not || ""; }
}).catch(() => { $("model").textContent = ""; });
function input(line) {
  if (!pairs) return line;
  const at = line.indexOf("|||");
  return at < 0 ? {text: line, text_pair: ""} : {text: line.slice(0, at).trim(), text_pair: line.slice(at + 3).trim()};
}
const POSITIVE = [/*POSITIVE*/], NEGATIVE = [/*NEGATIVE*/], DEEPEST = /*DEEPEST*/, SEPARATOR = /*SEPARATOR*/,
  TIGHT_BEFORE = /*TIGHT_BEFORE*/, TIGHT_AFTER = /*TIGHT_AFTER*/;
function colour(weight, largest) {  // as evaluation/words.py colours a word in the reports
  const c = weight >= 0 ? POSITIVE : NEGATIVE, alpha = largest > 0 ? DEEPEST * Math.abs(weight) / largest : 0;
  return "rgba(" + c.join(", ") + ", " + (+alpha.toFixed(3)) + ")";
}
function coloured(explanation) {
  const box = document.createElement("span"); box.className = "words";
  const largest = explanation.words.reduce((m, [, w]) => Math.max(m, Math.abs(w)), 0);
  explanation.words.forEach(([word, weight], i) => {
    const previous = i ? explanation.words[i - 1][0] : "";
    if (i && !(word.length === 1 && TIGHT_BEFORE.includes(word) || previous.length === 1 && TIGHT_AFTER.includes(previous)))
      box.append(" ");  // as evaluation/words.py spaces them
    if (word === SEPARATOR && weight === 0) {  // where a pair's second text starts
      const sep = document.createElement("span"); sep.className = "sep"; sep.textContent = "\\u2016";
      sep.title = "the second text starts here"; box.append(sep); return;
    }
    const span = document.createElement("span"); span.className = "w"; span.textContent = word;
    span.style.background = colour(weight, largest);
    span.title = (weight >= 0 ? "+" : "") + weight.toFixed(4) + " toward " + explanation.label;
    box.append(span);
  });
  return box;
}
function legend(target, label) {
  const swatch = (weight, name) => { const s = document.createElement("span"); s.className = "w";
    s.style.background = colour(weight, 1); s.textContent = name; return s; };
  const what = label === null ? (task === "regression" ? "the value" : "each text's top label") : label;
  const [up, down] = task === "regression" ? [" raised ", " lowered it"] : [" pushed toward ", " pushed against it"];
  target.replaceChildren("Explained: ", swatch(1, "green"), up + what + "; ", swatch(-1, "red"), down +
    "; the deeper the colour, the larger the word's weight against the text's largest (hover a word for it).");
  target.hidden = false;
}
function decided(scores) {
  if (task === "regression") return [scores[0].score.toPrecision(4), ""];
  if (task === "multi-label") {
    const chosen = scores.filter((c) => c.above_threshold);
    return [chosen.length ? chosen.map((c) => c.label).join(", ") : "no label", ""];
  }
  return [scores[0].label, scores[0].score.toFixed(2)];
}
$("go").addEventListener("click", async () => {
  const lines = $("text").value.split("\\n").map((s) => s.trim()).filter((s) => s.length);
  $("error").textContent = ""; $("one").hidden = true; $("many").hidden = true;
  if (!lines.length) { $("error").textContent = "Paste a text first."; return; }
  const headers = {"Content-Type": "application/json"};
  if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
  $("go").disabled = true;
  try {
    const explain = $("explain").checked && !$("explain").disabled;
    const r = await fetch("predict", {method: "POST", headers,
      body: JSON.stringify({inputs: lines.length === 1 ? input(lines[0]) : lines.map(input),
                            ...(explain ? {parameters: {explain: true}} : {})})});
    const answer = await r.json();
    if (!r.ok) { $("error").textContent = answer.error || ("HTTP " + r.status); return; }
    if (lines.length === 1) {
      const [shown, confidence] = decided(answer);
      $("label").textContent = task === "regression" ? answer[0].label + " " + shown : shown;
      $("confidence").textContent = confidence ? "confidence " + confidence : "";
      $("bar").parentElement.hidden = task !== "classification";
      $("bar").style.width = (100 * answer[0].score).toFixed(1) + "%";
      const table = $("classes"); table.replaceChildren();
      if (task !== "regression") {
        for (const c of answer) { const row = table.insertRow(); cell(row, c.label); cell(row, c.score.toFixed(4), "n");
          if (task === "multi-label") cell(row, c.above_threshold ? "\\u2713 over its threshold" : "", "note"); }
      }
      const explained = answer[0].explanation;
      $("why").hidden = !explained;
      if (explained) { legend($("legend"), explained.label); $("words").replaceChildren(coloured(explained)); }
      $("one").hidden = false;
    } else {
      const table = $("rows"); table.replaceChildren();
      const heads = {"classification": ["label", "confidence"], "multi-label": ["labels"], "regression": ["value"]};
      const head = table.insertRow(); ["text", ...heads[task]].forEach((h) => cell(head, h));
      answer.forEach((scores, i) => { const row = table.insertRow(); const [shown, confidence] = decided(scores);
        const text = cell(row, lines[i]);
        const explained = scores[0].explanation;
        if (explained) { text.replaceChildren(coloured(explained)); text.className = "many-words"; }
        if (explained && task === "multi-label") { const note = document.createElement("div"); note.className = "note";
          note.textContent = "explained: " + explained.label; text.append(note); }
        cell(row, shown, task === "regression" ? "n" : "");
        if (task === "classification") cell(row, confidence, "n"); });
      $("many-legend").hidden = true;
      if (answer[0][0].explanation) legend($("many-legend"), null);
      $("many").hidden = false;
    }
  } catch (e) { $("error").textContent = "The server did not answer: " + e; }
  finally { $("go").disabled = false; }
});
</script></body></html>
"""

PAGE = (_PAGE.replace("/*WORDS_CSS*/", WORDS_CSS).replace("/*POSITIVE*/", ", ".join(map(str, POSITIVE)))
        .replace("/*NEGATIVE*/", ", ".join(map(str, NEGATIVE))).replace("/*DEEPEST*/", str(DEEPEST))
        .replace("/*SEPARATOR*/", json.dumps(PAIR_SEPARATOR)).replace("/*TIGHT_BEFORE*/", json.dumps(TIGHT_BEFORE))
        .replace("/*TIGHT_AFTER*/", json.dumps(TIGHT_AFTER)))
