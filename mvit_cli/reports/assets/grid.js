// The classify report's grid: filter by top-1 class or by text, sort by confidence. The cards are in the page
// already (it reads without scripts); this only hides and reorders them.
(function () {
  "use strict";
  var grid = document.getElementById("grid");
  if (!grid) { return; }
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var texts = cards.map(function (card) { return card.textContent.toLowerCase(); });  // file name and classes
  var label = document.getElementById("label");
  var search = document.getElementById("search");
  var order = document.getElementById("order");
  var shown = document.getElementById("shown");
  var orders = {
    input: function (a, b) { return a.dataset.position - b.dataset.position; },
    "confidence-desc": function (a, b) {
      return b.dataset.confidence - a.dataset.confidence || a.dataset.position - b.dataset.position;
    },
    "confidence-asc": function (a, b) {
      return a.dataset.confidence - b.dataset.confidence || a.dataset.position - b.dataset.position;
    }
  };
  function filter() {
    var wanted = label.value, needle = search.value.trim().toLowerCase(), count = 0;
    cards.forEach(function (card, i) {
      var visible = (!wanted || card.dataset.top1 === wanted) && (!needle || texts[i].indexOf(needle) !== -1);
      card.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = count + " of " + cards.length + " shown";
  }
  function sort() {
    var fragment = document.createDocumentFragment();
    cards.slice().sort(orders[order.value] || orders.input).forEach(function (card) { fragment.appendChild(card); });
    grid.appendChild(fragment);
  }
  label.addEventListener("change", filter);
  search.addEventListener("input", filter);
  order.addEventListener("change", sort);
  filter();
}());
