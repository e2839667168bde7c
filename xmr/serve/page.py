"""The page ``xmr serve`` answers at ``/``: type a query, see the top-k labels (it calls ``POST /search``)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>xmr search</title>
<style>
body { font-family: sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }
form { display: flex; gap: .5rem; }
#query { flex: 1; padding: .4rem; }
#k { width: 4rem; }
#error { color: #a00; }
ol li { margin: .2rem 0; }
.score { color: #666; font-family: monospace; margin-right: .5rem; }
.id { color: #666; margin-left: .5rem; }
</style>
</head>
<body>
<h1>xmr search</h1>
<p id="about"></p>
<form id="form">
  <input id="query" name="query" placeholder="type a query" autofocus required>
  <label>k <input id="k" name="k" type="number" min="1" value="10"></label>
  <button id="go" type="submit">Search</button>
</form>
<p id="error" role="alert"></p>
<ol id="results"></ol>
<script>
const form = document.getElementById("form"), results = document.getElementById("results"),
      error = document.getElementById("error");
fetch("info").then(r => r.json()).then(info => {
  document.getElementById("about").textContent =
    `${info.predictor.labels} labels, ${info.predictor.structure} (xmr ${info.xmr_version})`;
});
form.addEventListener("submit", async event => {
  event.preventDefault();
  error.textContent = "";
  results.replaceChildren();
  const body = {queries: [document.getElementById("query").value],
                k: parseInt(document.getElementById("k").value, 10)};
  const response = await fetch("search", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) { error.textContent = answer.detail; return; }
  for (const hit of answer.results[0]) {
    const item = document.createElement("li"), score = document.createElement("span"),
          id = document.createElement("span");
    score.className = "score"; score.textContent = hit.score.toFixed(4);
    id.className = "id"; id.textContent = `[${hit.id}]`;
    item.append(score, document.createTextNode(hit.text), id);
    item.dataset.id = hit.id;
    results.append(item);
  }
  results.dataset.done = "1";
});
</script>
</body>
</html>
"""
