// Tables whose header cells have class "sortable" sort by that column when the header is clicked (again: the
// other way). Numbers sort by data-value when a cell has one, by text otherwise.
(function () {
  "use strict";
  function key(cell) {
    if (cell.dataset.value !== undefined) { return parseFloat(cell.dataset.value); }
    return cell.textContent.toLowerCase();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table"), function (table) {
    var headers = table.querySelectorAll("th.sortable");
    Array.prototype.forEach.call(headers, function (header) {
      header.addEventListener("click", function () {
        var column = Array.prototype.indexOf.call(header.parentNode.children, header);
        var ascending = header.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[column]), y = key(b.cells[column]);
          var order = x < y ? -1 : x > y ? 1 : 0;
          return (ascending ? order : -order) || a.dataset.order - b.dataset.order;
        });
        var fragment = document.createDocumentFragment();
        rows.forEach(function (row) { fragment.appendChild(row); });
        body.appendChild(fragment);
      });
    });
  });
}());
