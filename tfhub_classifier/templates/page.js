"use strict";
// Everything from the server or the user is put on the page as text (textContent), never as markup.
const form = document.getElementById("form");
const textBox = document.getElementById("text");
const button = document.getElementById("classify");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const result = document.getElementById("result");
let asked = 0;  // requests made: only the latest one's answer is shown

textBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const sent = textBox.value;  // the offsets are this text's, whatever the box holds when the answer comes
  const number = ++asked;
  errorLine.textContent = "";
  result.hidden = true;
  button.disabled = true;
  statusLine.textContent = "Classifying…";
  try {
    const response = await fetch(document.body.dataset.explain, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({instances: [sent]}),
    });
    const answer = await response.json();
    if (!response.ok) {
      throw new Error(answer.error || `${response.status} ${response.statusText}`);
    }
    if (number === asked) {
      show(sent, answer.predictions[0]);
    }
  } catch (error) {
    if (number === asked) {
      errorLine.textContent = error.message;
    }
  } finally {
    if (number === asked) {
      statusLine.textContent = "";
      button.disabled = false;
    }
  }
});

function show(text, prediction) {
  const names = prediction.label_names;
  const probabilities = Array.isArray(prediction.probabilities)
    ? prediction.probabilities : [1 - prediction.probabilities, prediction.probabilities];
  const given = prediction.labels || [prediction.label];
  document.getElementById("verdict").textContent = given.length ? given.join(", ") : "no label";
  const rows = document.querySelector("#labels tbody");
  rows.replaceChildren();
  names.forEach((name, index) => {
    const row = rows.insertRow();
    const label = row.insertCell();
    label.textContent = name;
    label.className = given.includes(name) ? "name given" : "name";
    const bar = document.createElement("meter");
    bar.min = 0;
    bar.max = 1;
    bar.value = probabilities[index];
    bar.setAttribute("aria-label", `${name}: ${probabilities[index].toFixed(3)}`);
    row.insertCell().append(bar);
    row.insertCell().textContent = probabilities[index].toFixed(3);
  });
  const words = document.getElementById("words");
  words.replaceChildren();
  const characters = Array.from(text);  // offsets count characters (code points), as Python does
  const slice = (start, end) => characters.slice(start, end).join("");
  let largest = 1e-9;
  for (const weight of prediction.weights) {
    largest = Math.max(largest, Math.abs(weight || 0));
  }
  let last = 0;
  prediction.offsets.forEach(([start, end], index) => {
    words.append(document.createTextNode(slice(last, start)));
    const word = document.createElement("span");
    word.textContent = slice(start, end);
    const weight = prediction.weights[index];
    if (weight) {
      const strength = (0.1 + 0.6 * Math.abs(weight) / largest).toFixed(2);
      word.style.backgroundColor = weight > 0 ? `rgba(0, 150, 0, ${strength})` : `rgba(220, 0, 0, ${strength})`;
      word.title = `${weight > 0 ? "+" : ""}${weight.toFixed(4)} toward ${prediction.explained_label}`;
      word.className = weight > 0 ? "for" : "against";
    }
    words.append(word);
    last = end;
  });
  words.append(document.createTextNode(slice(last)));
  // The same weights as text, for screen readers and keyboards: the words that moved the label most.
  const top = document.getElementById("top");
  top.replaceChildren();
  prediction.words.map((word, index) => [word, prediction.weights[index]])
    .filter(([, weight]) => weight)
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
    .slice(0, 8)
    .forEach(([word, weight]) => {
      const item = document.createElement("li");
      item.textContent = `${word}: ${weight > 0 ? "+" : ""}${weight.toFixed(3)} ${weight > 0 ? "for" : "against"} ${prediction.explained_label}`;
      top.append(item);
    });
  result.hidden = false;
}
