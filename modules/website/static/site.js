// iceprod: live validation of the submit page's config (the page works without it).
(function () {
  var area = document.getElementById('config');
  var out = document.getElementById('validation');
  var form = document.getElementById('submit-form');
  if (!area || !out || !form) { return; }
  var timer = null;
  function show(errors) {
    out.textContent = '';
    errors.forEach(function (e) {
      var p = document.createElement('p');
      p.className = e.ok ? 'ok' : 'error';
      p.textContent = e.text;
      out.appendChild(p);
    });
  }
  function check() {
    var body = 'csrf_token=' + encodeURIComponent(form.elements.csrf_token.value) +
      '&config=' + encodeURIComponent(area.value);
    fetch('/submit/validate', {method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: body})
      .then(function (r) { return r.json(); })
      .then(function (j) {
        if (j.valid) { show([{ok: true, text: 'config is valid'}]); return; }
        show(j.errors.map(function (e) { return {text: e.message}; }));
      })
      .catch(function () {});
  }
  area.addEventListener('input', function () {
    clearTimeout(timer);
    timer = setTimeout(check, 400);
  });
}());
