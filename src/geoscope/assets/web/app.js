// geoscope's page: drop photos, send them to POST /predict, show the answer and an offline map.
// No library: the map is an SVG of the country outlines served by /countries.geojson in Web Mercator,
// panned by dragging and zoomed with the wheel or the buttons.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const WORLD = 1024; // side of the Mercator square, in world units
  const MAX_LAT = 85.0511;
  const MAX_ZOOM = 1 << 15;
  const TOP_K = 5;
  const EVIDENCE = 5; // training places most like the photo, drawn as small squares

  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function pct(p) {
    const v = 100 * p;
    if (v > 0 && v < 0.1) return "<0.1%";
    return (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "%";
  }

  function project(lon, lat) {
    const phi = (Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI) / 180;
    const x = ((lon + 180) / 360) * WORLD;
    const y = ((1 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / Math.PI) / 2) * WORLD;
    return [x, y];
  }

  // --- the map -------------------------------------------------------------------------------

  const map = {
    svg: $("map"),
    world: $("world"),
    markers: $("markers"),
    k: 1,
    tx: 0,
    ty: 0,
    width: 1,
    height: 1,
    guesses: [],
    answer: null, // the best single answer: its own marker, apart from the guesses' ranking
    home: null, // [x0, y0, x1, y1] the view when nothing is answered: the model's places

    init() {
      this.measure();
      this.fit([0, 0, WORLD, WORLD]);
      new ResizeObserver(() => {
        const cx = (this.width / 2 - this.tx) / this.k;
        const cy = (this.height / 2 - this.ty) / this.k;
        this.measure();
        this.setView(this.k, this.width / 2 - cx * this.k, this.height / 2 - cy * this.k);
      }).observe(this.svg);
      this.svg.addEventListener("wheel", (ev) => {
        ev.preventDefault();
        const scale = ev.deltaMode === 1 ? 16 : ev.deltaMode === 2 ? 400 : 1;
        const rect = this.svg.getBoundingClientRect();
        this.zoomAt(Math.exp(-ev.deltaY * scale * 0.0015), ev.clientX - rect.left, ev.clientY - rect.top);
      }, { passive: false });
      let drag = null;
      this.svg.addEventListener("pointerdown", (ev) => {
        if (ev.button !== 0) return;
        drag = { x: ev.clientX, y: ev.clientY, tx: this.tx, ty: this.ty };
        this.svg.setPointerCapture(ev.pointerId);
        this.svg.classList.add("panning");
      });
      this.svg.addEventListener("pointermove", (ev) => {
        if (!drag) return;
        this.setView(this.k, drag.tx + ev.clientX - drag.x, drag.ty + ev.clientY - drag.y);
      });
      const end = () => { drag = null; this.svg.classList.remove("panning"); };
      this.svg.addEventListener("pointerup", end);
      this.svg.addEventListener("pointercancel", end);
      this.svg.addEventListener("dblclick", (ev) => {
        const rect = this.svg.getBoundingClientRect();
        this.zoomAt(2, ev.clientX - rect.left, ev.clientY - rect.top);
      });
      $("zoom-in").addEventListener("click", () => this.zoomAt(2, this.width / 2, this.height / 2));
      $("zoom-out").addEventListener("click", () => this.zoomAt(0.5, this.width / 2, this.height / 2));
      $("zoom-fit").addEventListener("click", () => this.fitGuesses());
    },

    measure() {
      const rect = this.svg.getBoundingClientRect();
      this.width = Math.max(1, rect.width);
      this.height = Math.max(1, rect.height);
    },

    minZoom() {
      return Math.min(this.width, this.height) / WORLD;
    },

    setView(k, tx, ty) {
      k = Math.max(this.minZoom(), Math.min(MAX_ZOOM, k));
      const span = WORLD * k;
      // Keep the world on screen: centred when it is smaller than the view, else no gap at an edge.
      tx = span <= this.width ? (this.width - span) / 2 : Math.min(0, Math.max(this.width - span, tx));
      ty = span <= this.height ? (this.height - span) / 2 : Math.min(0, Math.max(this.height - span, ty));
      this.k = k; this.tx = tx; this.ty = ty;
      this.world.setAttribute("transform", `translate(${tx.toFixed(2)} ${ty.toFixed(2)}) scale(${k})`);
      this.drawMarkers();
    },

    zoomAt(factor, cx, cy) {
      const k = Math.max(this.minZoom(), Math.min(MAX_ZOOM, this.k * factor));
      const f = k / this.k;
      this.setView(k, cx - (cx - this.tx) * f, cy - (cy - this.ty) * f);
    },

    fit([x0, y0, x1, y1], pad = 48) {
      const w = Math.max(x1 - x0, 1e-3), h = Math.max(y1 - y0, 1e-3);
      const k = Math.min((this.width - 2 * pad) / w, (this.height - 2 * pad) / h);
      const kk = Math.max(this.minZoom(), Math.min(MAX_ZOOM, k));
      this.setView(kk, this.width / 2 - ((x0 + x1) / 2) * kk, this.height / 2 - ((y0 + y1) / 2) * kk);
    },

    fitGuesses() {
      const shown = this.guesses.filter((g, i) => i < 3 || g.probability >= 0.05);
      if (this.answer) shown.push(this.answer);
      if (!shown.length) { this.fit(this.home || [0, 0, WORLD, WORLD]); return; }
      const pts = shown.map((g) => project(g.lon, g.lat));
      const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
      const minSpan = 6; // world units (about 2° of longitude), so one guess still shows its surroundings
      const cx = (Math.min(...xs) + Math.max(...xs)) / 2, cy = (Math.min(...ys) + Math.max(...ys)) / 2;
      const hw = Math.max(Math.max(...xs) - Math.min(...xs), minSpan) / 2;
      const hh = Math.max(Math.max(...ys) - Math.min(...ys), minSpan) / 2;
      this.fit([cx - hw, cy - hh, cx + hw, cy + hh], 70);
    },

    drawCountries(geojson) {
      const group = $("countries");
      const frag = document.createDocumentFragment();
      for (const feature of geojson.features) {
        const geometry = feature.geometry;
        if (!geometry) continue;
        const polygons = geometry.type === "Polygon" ? [geometry.coordinates]
          : geometry.type === "MultiPolygon" ? geometry.coordinates : [];
        let d = "";
        for (const rings of polygons) {
          for (const ring of rings) {
            ring.forEach(([lon, lat], i) => {
              const [x, y] = project(lon, lat);
              d += (i ? "L" : "M") + x.toFixed(2) + " " + y.toFixed(2);
            });
            d += "Z";
          }
        }
        if (!d) continue;
        const path = document.createElementNS(SVG, "path");
        path.setAttribute("d", d);
        path.setAttribute("class", "country");
        const title = document.createElementNS(SVG, "title");
        title.textContent = feature.properties && feature.properties.name || "";
        path.appendChild(title);
        frag.appendChild(path);
      }
      group.appendChild(frag);
      this.svg.dataset.countries = String(group.childElementCount);
    },

    drawCoverage(places) {
      let d = "";
      const pts = places.map((p) => project(p.lon, p.lat));
      for (const [x, y] of pts) d += `M${x.toFixed(2)} ${y.toFixed(2)}h0`;
      $("coverage").setAttribute("d", d);
      if (pts.length) {
        const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
        this.home = [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
        if (!this.guesses.length) this.fit(this.home, 60);
      }
    },

    show(answer) {
      this.guesses = (answer && answer.guesses) || [];
      this.evidence = (answer && answer.evidence) || []; // training places most like the photo: small squares
      this.answer = (answer && answer.answer) || null;
      this.fitGuesses();
    },

    drawMarkers() {
      const layer = this.markers;
      layer.textContent = "";
      for (const e of this.evidence || []) { // under the guesses: what the answer rests on
        const [wx, wy] = project(e.lon, e.lat);
        const mark = document.createElementNS(SVG, "rect");
        mark.setAttribute("class", "evidence");
        mark.setAttribute("x", (this.tx + wx * this.k - 4).toFixed(1));
        mark.setAttribute("y", (this.ty + wy * this.k - 4).toFixed(1));
        mark.setAttribute("width", "8");
        mark.setAttribute("height", "8");
        const title = document.createElementNS(SVG, "title");
        title.textContent = `a training photo like this one: ${e.label} (similarity ${e.similarity.toFixed(2)}, ` +
          `${Math.round(e.km_from_answer)} km from the answer)`;
        mark.appendChild(title);
        layer.appendChild(mark);
      }
      // Least probable first, so the best guess is drawn on top.
      const order = this.guesses.map((g, i) => i).reverse();
      for (const i of order) {
        const g = this.guesses[i];
        const [wx, wy] = project(g.lon, g.lat);
        const x = this.tx + wx * this.k, y = this.ty + wy * this.k;
        const marker = document.createElementNS(SVG, "g");
        marker.setAttribute("class", "marker" + (i === 0 ? " top" : ""));
        marker.setAttribute("transform", `translate(${x.toFixed(1)} ${y.toFixed(1)})`);
        marker.dataset.rank = String(i + 1);
        const halo = document.createElementNS(SVG, "circle");
        halo.setAttribute("class", "halo");
        halo.setAttribute("r", (8 + 34 * Math.sqrt(Math.max(0, g.probability))).toFixed(1));
        const core = document.createElementNS(SVG, "circle");
        core.setAttribute("class", "core");
        core.setAttribute("r", "8");
        const label = document.createElementNS(SVG, "text");
        label.textContent = String(i + 1);
        const title = document.createElementNS(SVG, "title");
        title.textContent = `${i + 1}. ${g.name} (${pct(g.probability)})`;
        marker.append(halo, core, label, title);
        marker.addEventListener("mouseenter", () => highlight(i, true));
        marker.addEventListener("mouseleave", () => highlight(i, false));
        layer.appendChild(marker);
      }
      if (this.answer) { // drawn last: on top of the guess it usually shares its point with
        const a = this.answer;
        const [wx, wy] = project(a.lon, a.lat);
        const marker = document.createElementNS(SVG, "g");
        marker.setAttribute("class", "marker answer");
        marker.setAttribute("transform", `translate(${(this.tx + wx * this.k).toFixed(1)} ${(this.ty + wy * this.k).toFixed(1)})`);
        const core = document.createElementNS(SVG, "circle");
        core.setAttribute("class", "core");
        core.setAttribute("r", "10");
        const label = document.createElementNS(SVG, "text");
        label.textContent = "★";
        const title = document.createElementNS(SVG, "title");
        title.textContent = `answer: ${a.name}`;
        marker.append(core, label, title);
        layer.appendChild(marker);
      }
      this.drawNames();
    },

    // Names beside the markers, each where it overlaps no other name or marker: the answer's first, then the
    // three most probable guesses' (a guess named like the answer is not named twice).
    drawNames() {
      const at = (g) => {
        const [wx, wy] = project(g.lon, g.lat);
        return [this.tx + wx * this.k, this.ty + wy * this.k];
      };
      const points = [...this.guesses, ...(this.answer ? [this.answer] : [])].map(at);
      const placed = points.map(([x, y]) => ({ x: x - 10, y: y - 10, w: 20, h: 20 }));
      const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
      const named = this.answer ? [{ g: this.answer, answer: true }] : [];
      this.guesses.slice(0, 3).forEach((g) => {
        if (!named.some((n) => n.g.name === g.name)) named.push({ g, answer: false });
      });
      named.forEach(({ g, answer }) => {
        const [cx, cy] = at(g);
        const text = document.createElementNS(SVG, "text");
        text.setAttribute("class", "name" + (answer ? " answer" : ""));
        text.textContent = g.place || g.name;
        this.markers.appendChild(text);
        const w = text.getComputedTextLength() + 4, h = 16;
        const spots = [[12, -h - 4], [12, 4], [-w - 12, -h - 4], [-w - 12, 4], [-w / 2, -h - 14], [-w / 2, 14]];
        for (const [dx, dy] of spots) {
          const box = { x: cx + dx, y: cy + dy, w, h };
          if (!placed.some((other) => overlaps(box, other))) {
            text.setAttribute("x", (box.x + 2).toFixed(1));
            text.setAttribute("y", (box.y + h - 4).toFixed(1));
            placed.push(box);
            return;
          }
        }
        text.remove(); // no free spot: the number on the marker and the list say it
      });
    },
  };

  function highlight(index, on) {
    const marker = map.markers.querySelector(`.marker[data-rank="${index + 1}"]`);
    if (marker) marker.classList.toggle("hover", on);
    const row = document.querySelector(`.answer.selected .guesses li[data-rank="${index + 1}"]`);
    if (row) row.classList.toggle("hover", on);
  }

  // --- answers ---------------------------------------------------------------------------------

  const state = { answers: [], selected: 0, previews: [] };

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function bars(items) {
    return "<ul class=\"bars\">" + items.map((item) =>
      `<li><span class="name" title="${esc(item.name)}">${esc(item.name)}</span><span class="pct">${pct(item.probability)}</span>` +
      `<span class="bar"><i style="width:${(100 * item.probability).toFixed(1)}%"></i></span></li>`).join("") + "</ul>";
  }

  function renderAnswer(answer, index) {
    const card = document.createElement("article");
    card.className = "answer" + (index === state.selected ? " selected" : "");
    const views = answer.views || null;
    const title = views && views.length > 1 ? `${views.length} views of one place`
      : esc(answer.image || "upload");
    let html = `<h2>${title}${views && views.length > 1 ? ` <small>${esc(views.join(", "))}</small>` : ""}</h2>`;
    if (answer.error) {
      card.innerHTML = html + `<p class="error">${esc(answer.error)}</p>`;
      return card;
    }
    if (answer.in_coverage === false) {
      const score = typeof answer.coverage_score === "number" ? ` (coverage score ${answer.coverage_score.toFixed(2)})` : "";
      html += `<div class="banner" role="alert"><strong>Don't know: outside what this model knows.</strong>` +
        (answer.coverage_reason ? `This photo: ${esc(answer.coverage_reason)}${score}. `
          : `This photo looks unlike the places the model was trained on${score}. `) +
        `The guesses below are only the nearest places it knows.</div>`;
    }
    const best = answer.answer || null;
    if (best) {
      const score = typeof best.expected_geoscore === "number"
        ? ` · expected score ${Math.round(best.expected_geoscore).toLocaleString("en")}` : "";
      html += "<h3>Answer</h3><p class=\"best\"><span class=\"star\">★</span>" +
        `<span class="where">${esc(best.name)}<small>${best.lat.toFixed(3)}, ${best.lon.toFixed(3)}${score}</small></span></p>`;
      const path = (best.hierarchy || []).filter((step) => step && step.name);
      if (path.length) {
        html += "<p class=\"path\">" + path.map((step) => esc(step.name) +
          (typeof step.probability === "number" ? ` <b>${pct(step.probability)}</b>` : "")).join(" → ") + "</p>";
      }
    }
    const chips = [];
    if (answer.in_coverage === true) chips.push("<span class=\"chip\">within the model's coverage</span>");
    if (answer.confidence && typeof answer.confidence === "object") {
      const entries = Object.entries(answer.confidence).filter(([, p]) => typeof p === "number")
        .sort((a, b) => Number(a[0]) - Number(b[0]));
      for (const [km, p] of entries) chips.push(`<span class="chip">within ${esc(km)} km: <b>${pct(p)}</b></span>`);
      if (entries.length) chips.unshift("<h3>How sure (the answer)</h3>");
    }
    html += chips.join("");
    const levels = answer.levels && typeof answer.levels === "object" ? answer.levels : {};
    for (const [level, items] of Object.entries(levels)) {
      if (!Array.isArray(items) || !items.length) continue;
      html += `<h3>${esc(level)}</h3>` + bars(items.slice(0, 3));
    }
    const guesses = answer.guesses || [];
    if (guesses.length) {
      html += "<h3>Guesses by probability</h3><ol class=\"guesses\">" + guesses.map((g, i) => {
        const chosen = best && g.name === best.name;
        const coords = `${g.lat.toFixed(3)}, ${g.lon.toFixed(3)}`;
        const from = g.label && g.label !== g.name ? ` title="the model's label: ${esc(g.label)}"` : "";
        return `<li data-rank="${i + 1}"${chosen ? " class=\"chosen\"" : ""}><span class="rank">${i + 1}</span>` +
          `<span class="where"${from}>${esc(g.name)}<small>${coords}${chosen ? " · the answer" : ""}</small></span>` +
          `<span class="pct">${pct(g.probability)}</span>` +
          `<span class="bar"><i style="width:${(100 * g.probability).toFixed(1)}%"></i></span></li>`;
      }).join("") + "</ol>";
    }
    if (Array.isArray(answer.warnings) && answer.warnings.length) {
      html += "<ul class=\"warnings\">" + answer.warnings.map((w) => `<li>${esc(w)}</li>`).join("") + "</ul>";
    }
    card.innerHTML = html;
    card.querySelectorAll(".guesses li").forEach((row) => {
      const i = Number(row.dataset.rank) - 1;
      row.addEventListener("mouseenter", () => highlight(i, true));
      row.addEventListener("mouseleave", () => highlight(i, false));
      row.addEventListener("click", (ev) => {
        ev.stopPropagation();
        select(index);
        const [x, y] = project(guesses[i].lon, guesses[i].lat);
        map.fit([x - 2, y - 2, x + 2, y + 2], 70);
      });
    });
    card.addEventListener("click", () => select(index));
    return card;
  }

  function renderAnswers() {
    const results = $("results");
    results.textContent = "";
    state.answers.forEach((answer, i) => results.appendChild(renderAnswer(answer, i)));
  }

  function select(index) {
    if (index === state.selected && map.answer === ((state.answers[index] || {}).answer || null)) return;
    state.selected = index;
    document.querySelectorAll(".answer").forEach((el, i) => el.classList.toggle("selected", i === index));
    document.querySelectorAll(".previews figure").forEach((el, i) => {
      const answer = state.answers[index];
      el.classList.toggle("selected", answer && answer.views ? true : i === index);
    });
    const answer = state.answers[index];
    map.show(answer && !answer.error ? answer : null);
  }

  function showPreviews(files) {
    state.previews.forEach((url) => URL.revokeObjectURL(url));
    state.previews = files.map((file) => URL.createObjectURL(file));
    const box = $("previews");
    box.textContent = "";
    files.forEach((file, i) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = state.previews[i];
      img.alt = file.name;
      const caption = document.createElement("figcaption");
      caption.textContent = file.name;
      figure.append(img, caption);
      figure.addEventListener("click", () => { if (state.answers.length > 1) select(i); });
      box.appendChild(figure);
    });
  }

  async function predict(files) {
    files = files.filter((f) => f && f.size >= 0);
    if (!files.length) return;
    const views = $("views").checked && files.length > 1;
    showPreviews(files);
    state.answers = [];
    state.selected = 0;
    renderAnswers();
    map.show(null);
    document.body.dataset.state = "busy";
    setStatus(files.length > 1 ? (views ? `Asking the model about ${files.length} views of one place…`
      : `Asking the model about ${files.length} photos…`) : "Asking the model…");
    const form = new FormData();
    files.forEach((file) => form.append("files", file, file.name));
    try {
      const reply = await fetch(`predict?top_k=${TOP_K}&evidence=${EVIDENCE}${views ? "&views=true&allow_missing_views=true" : ""}`, { method: "POST", body: form });
      const data = await reply.json().catch(() => ({ error: `the server answered ${reply.status}` }));
      if (!reply.ok) {
        document.body.dataset.state = "error";
        setStatus(data.error || `the server answered ${reply.status}`, true);
        return;
      }
      state.answers = Array.isArray(data.predictions) ? data.predictions : [data];
      document.body.dataset.state = "answered";
      setStatus(state.answers.length > 1 ? "Click an answer or a photo to show it on the map." : "");
      renderAnswers();
      state.selected = -1;
      select(0);
    } catch (err) {
      document.body.dataset.state = "error";
      setStatus(`could not reach the server (${err.message})`, true);
    }
  }

  // --- input: drop anywhere, click or keyboard on the drop zone, the file picker ---------------

  function imageFiles(list) {
    return Array.from(list || []).filter((f) => !f.type || f.type.startsWith("image/"));
  }

  const drop = $("drop");
  const input = $("file");
  drop.addEventListener("click", (ev) => { if (ev.target !== input) input.click(); });
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => { predict(imageFiles(input.files)); input.value = ""; });
  let depth = 0;
  document.addEventListener("dragenter", (ev) => { ev.preventDefault(); depth++; document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; document.body.classList.remove("dragging"); } });
  document.addEventListener("dragover", (ev) => ev.preventDefault());
  document.addEventListener("drop", (ev) => {
    ev.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    const files = imageFiles(ev.dataTransfer && ev.dataTransfer.files);
    if (files.length) predict(files);
    else setStatus("Drop image files (JPEG, PNG, WebP…).", true);
  });

  // --- start: the map, the model's places, the model's name --------------------------------------

  map.init();
  fetch("countries.geojson").then((r) => r.json()).then((geojson) => {
    map.drawCountries(geojson);
    map.svg.dataset.ready = "1";
  }).catch((err) => setStatus(`map outlines unavailable (${err.message})`, true));
  fetch("model/places").then((r) => r.json()).then((data) => map.drawCoverage(data.places || [])).catch(() => {});
  fetch("model").then((r) => r.json()).then((info) => {
    $("model-name").textContent = `model ${info.name || "?"} · ${info.labels} places`;
  }).catch(() => {});
})();
