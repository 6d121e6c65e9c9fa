// The query form submits as soon as a file is chosen, and a file dropped anywhere on the page
// goes through the same form (so the no-JS path and the JS path are one request).
(() => {
  const form = document.getElementById("query-form");
  const input = document.getElementById("query-input");
  if (!form || !input) return;
  input.addEventListener("change", () => { if (input.files.length) form.submit(); });
  let depth = 0;
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) document.body.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    input.files = event.dataTransfer.files;
    if (input.files.length) form.submit();
  });
})();
