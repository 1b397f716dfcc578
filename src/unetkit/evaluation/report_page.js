(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim().toLowerCase() : v;
  }
  function compare(a, b, descending) {
    if (a === "" && b === "") return 0;
    if (a === "") return 1;
    if (b === "") return -1;
    var x = parseFloat(a), y = parseFloat(b);
    var order = (isNaN(x) || isNaN(y)) ? (a < b ? -1 : a > b ? 1 : 0) : x - y;
    return descending ? -order : order;
  }
  document.querySelectorAll("table.sortable-table").forEach(function (table) {
    var head = table.tHead.rows[table.tHead.rows.length - 1];
    Array.prototype.forEach.call(head.cells, function (th, column) {
      th.addEventListener("click", function () {
        var descending = !th.classList.contains("sorted-desc");
        Array.prototype.forEach.call(head.cells, function (other) {
          other.classList.remove("sorted-asc", "sorted-desc");
        });
        th.classList.add(descending ? "sorted-desc" : "sorted-asc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r, s) {
          return compare(key(r.cells[column]), key(s.cells[column]), descending);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    table.setAttribute("data-sort-ready", "yes");
  });
})();
