// geoscope's page: drop photos, send them to POST /predict, show the answer and an offline map.
// No library: the map is an SVG of the country outlines served by /countries.geojson in Web Mercator,
// panned by dragging and zoomed with the wheel or the buttons. Over them, from /regions.geojson, the
// first-level borders (approximate: drawn from GeoNames towns), region names and larger places of the
// model's countries and of the guesses' countries, named as the zoom leaves room for them.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const WORLD = 1024; // side of the Mercator square, in world units
  const MAX_LAT = 85.0511;
  const MAX_ZOOM = 1 << 15;
  const TOP_K = 5;
  const EVIDENCE = 5; // training places most like the photo, drawn as small squares
  const PLACES_FROM_ZOOM = 3; // places are named from this zoom on (the world 3,072 px wide: a country's scale)
  const MAX_PLACES = 60; // names of places on screen at once, at most
  const REGION_NAME_PX = 90; // a region is named once it is this wide on screen
  const measure = document.createElement("canvas").getContext("2d");
  const widths = new Map();

  function textWidth(text, font) { // pixels, measured once per name and font
    const key = font + "|" + text;
    if (!widths.has(key)) { measure.font = font; widths.set(key, measure.measureText(text).width); }
    return widths.get(key);
  }

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
    outlines: [], // each country's iso2, box and rings (lon/lat), to tell which country a point is in
    loaded: new Set(), // countries whose borders and places are asked for
    drawn: new Set(), // …and drawn
    places: [], // larger places, most populous first: {name, population, x, y} in world units
    regionNames: [], // {name, x, y, w, h}: where each region's name goes, and its largest part's size

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
        const iso2 = feature.properties && feature.properties.iso2;
        if (iso2) {
          const rings = polygons.flat();
          const lons = rings.flat().map((p) => p[0]), lats = rings.flat().map((p) => p[1]);
          this.outlines.push({ iso2, rings, box: [Math.min(...lons), Math.min(...lats), Math.max(...lons), Math.max(...lats)] });
        }
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

    // The country holding a point (its ISO code), by the even-odd rule over the outlines' rings; "" at sea.
    countryAt(lon, lat) {
      for (const { iso2, rings, box } of this.outlines) {
        if (lon < box[0] || lon > box[2] || lat < box[1] || lat > box[3]) continue;
        let inside = false;
        for (const ring of rings) {
          for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
            const [xi, yi] = ring[i], [xj, yj] = ring[j];
            if ((yi > lat) !== (yj > lat) && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) inside = !inside;
          }
        }
        if (inside) return iso2;
      }
      return "";
    },

    // A /regions.geojson reply: borders as thin lines under the coverage, region names and places kept to be
    // named by drawLabels as the zoom allows.
    addRegions(geojson) {
      const group = $("borders");
      const fresh = new Set((geojson.countries || []).filter((code) => !this.drawn.has(code)));
      fresh.forEach((code) => { this.loaded.add(code); this.drawn.add(code); });
      for (const feature of geojson.features || []) {
        if (!fresh.has(feature.properties.country)) continue; // drawn from an earlier reply
        const kind = feature.properties.kind, geometry = feature.geometry;
        if (kind === "borders") {
          const lines = geometry.type === "LineString" ? [geometry.coordinates]
            : geometry.type === "MultiLineString" ? geometry.coordinates : [];
          let d = "";
          for (const line of lines) {
            line.forEach(([lon, lat], i) => {
              const [x, y] = project(lon, lat);
              d += (i ? "L" : "M") + x.toFixed(2) + " " + y.toFixed(2);
            });
          }
          const path = document.createElementNS(SVG, "path");
          path.setAttribute("d", d);
          path.setAttribute("class", "border");
          path.dataset.country = feature.properties.country;
          group.appendChild(path);
        } else if (kind === "region") {
          const [x, y] = project(...geometry.coordinates);
          const [west, south, east, north] = feature.properties.bbox;
          const [x0, y0] = project(west, north), [x1, y1] = project(east, south);
          this.regionNames.push({ name: feature.properties.name, x, y, w: x1 - x0, h: y1 - y0 });
        } else if (kind === "place") {
          const [x, y] = project(...geometry.coordinates);
          this.places.push({ name: feature.properties.name, population: feature.properties.population, x, y });
        }
      }
      this.places.sort((a, b) => b.population - a.population);
      this.svg.dataset.borders = String(group.childElementCount);
      this.drawMarkers();
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
      loadRegions(this.guessCountries());
    },

    guessCountries() {
      return [...this.guesses, ...(this.answer ? [this.answer] : [])].map((g) => this.countryAt(g.lon, g.lat));
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
      this.drawLabels(this.drawNames());
    },

    // Region names and places under the markers, where they overlap nothing already named: region names once a
    // region is wide enough on screen, then places, most populous first, from PLACES_FROM_ZOOM on.
    drawLabels(placed) {
      const layer = $("labels");
      layer.textContent = "";
      const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
      const free = (box) => box.x >= 0 && box.y >= 0 && box.x + box.w <= this.width && box.y + box.h <= this.height &&
        !placed.some((other) => overlaps(box, other));
      const frame = this.svg.getBoundingClientRect();
      for (const panel of document.querySelectorAll(".map-wrap .legend, .map-wrap .zoom")) { // names stay clear
        const r = panel.getBoundingClientRect();
        placed.push({ x: r.left - frame.left, y: r.top - frame.top, w: r.width, h: r.height });
      }
      let regions = 0, places = 0;
      for (const r of this.regionNames) {
        if (r.w * this.k < REGION_NAME_PX) continue;
        const w = textWidth(r.name, "italic 11px system-ui") + 4, x = this.tx + r.x * this.k, y = this.ty + r.y * this.k;
        const box = { x: x - w / 2, y: y - 8, w, h: 16 };
        if (!free(box)) continue;
        const text = document.createElementNS(SVG, "text");
        text.setAttribute("class", "region-name");
        text.setAttribute("x", x.toFixed(1));
        text.setAttribute("y", (y + 4).toFixed(1));
        text.textContent = r.name;
        layer.appendChild(text);
        placed.push(box);
        regions++;
      }
      if (this.k >= PLACES_FROM_ZOOM) {
        for (const p of this.places) {
          if (places >= MAX_PLACES) break;
          const x = this.tx + p.x * this.k, y = this.ty + p.y * this.k;
          if (x < 0 || y < 0 || x > this.width || y > this.height) continue;
          const w = textWidth(p.name, "11px system-ui") + 10;
          const box = { x: x - 3, y: y - 8, w, h: 15 };
          if (!free(box)) continue;
          const dot = document.createElementNS(SVG, "circle");
          dot.setAttribute("class", "place");
          dot.setAttribute("cx", x.toFixed(1));
          dot.setAttribute("cy", y.toFixed(1));
          dot.setAttribute("r", "2.5");
          const text = document.createElementNS(SVG, "text");
          text.setAttribute("class", "place-name");
          text.setAttribute("x", (x + 5).toFixed(1));
          text.setAttribute("y", (y + 4).toFixed(1));
          text.textContent = p.name;
          layer.append(dot, text);
          placed.push(box);
          places++;
        }
      }
      this.svg.dataset.regionNames = String(regions);
      this.svg.dataset.places = String(places);
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
      return placed; // what is named or marked: the places' names keep clear of it
    },
  };

  function highlight(index, on) {
    const marker = map.markers.querySelector(`.marker[data-rank="${index + 1}"]`);
    if (marker) marker.classList.toggle("hover", on);
    const row = document.querySelector(`.answer.selected .guesses li[data-rank="${index + 1}"]`);
    if (row) row.classList.toggle("hover", on);
  }

  // --- answers ---------------------------------------------------------------------------------

  const state = { answers: [], selected: 0, previews: [], files: [] };

  // The borders, region names and places of some countries (none given: the model's), each country asked once.
  function loadRegions(codes) {
    const urls = [];
    if (!codes) urls.push("regions.geojson");
    for (const code of new Set(codes || [])) {
      if (!code || map.loaded.has(code)) continue;
      map.loaded.add(code);
      urls.push(`regions.geojson?countries=${encodeURIComponent(code)}`);
    }
    for (const url of urls) {
      fetch(url).then((r) => (r.ok ? r.json() : null)).then((geojson) => { if (geojson) map.addRegions(geojson); })
        .catch(() => {});
    }
  }

  // Where in the photo: the occlusion map of one answered photo, asked for on demand (65 runs of the model).
  async function explainPhoto(index, card) {
    const button = card.querySelector("button.explain");
    const file = state.files[index];
    button.disabled = true;
    button.textContent = "Hiding each part of the photo in turn…";
    const form = new FormData();
    form.append("files", file, file.name);
    try {
      const reply = await fetch(`predict?top_k=${TOP_K}&explain=true`, { method: "POST", body: form });
      const data = await reply.json().catch(() => ({ error: `the server answered ${reply.status}` }));
      if (!reply.ok || !data.explanation) throw new Error(data.error || "no map came back");
      state.answers[index].explanation = data.explanation;
      drawWhere(card, index, data.explanation);
    } catch (err) {
      button.disabled = false;
      button.textContent = "Where in the photo?";
      setStatus(`where in the photo: ${err.message}`, true);
    }
  }

  // The map over the photo: each crop the model reads framed, its grid of cells red where hiding the cell lowers
  // the log-odds of the answer (or of its country), blue where it raises them; a toggle picks which, or none.
  function drawWhere(card, index, ex) {
    const box = card.querySelector(".where-photo");
    box.innerHTML = "<div class=\"photo\"><img alt=\"the photo\"><canvas></canvas></div>" +
      "<div class=\"layers\" role=\"group\" aria-label=\"what the map over the photo shows\">" +
      `<button type="button" data-layer="label_drop" class="on">the answer: ${esc(ex.label)} <b>${pct(ex.probability)}</b></button>` +
      `<button type="button" data-layer="country_drop">its country: ${esc(ex.country)} <b>${pct(ex.country_probability)}</b></button>` +
      "<button type=\"button\" data-layer=\"\">the photo only</button></div>" +
      "<p class=\"note\">Red: hiding that part lowers the model's belief in the answer (it points there); blue: " +
      "hiding it raises it. The frame is the square the model reads.</p>";
    const img = box.querySelector("img"), canvas = box.querySelector("canvas");
    const paint = (layer) => {
      const scale = Math.min(1, 640 / Math.max(img.naturalWidth, img.naturalHeight, 1));
      const w = Math.max(1, Math.round(img.naturalWidth * scale)), h = Math.max(1, Math.round(img.naturalHeight * scale));
      canvas.width = w;
      canvas.height = h;
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, w, h);
      canvas.dataset.layer = layer;
      box.querySelectorAll(".layers button").forEach((b) => b.classList.toggle("on", b.dataset.layer === layer));
      const grid = layer ? ex[layer] : null;
      const cells = document.createElement("canvas");
      if (grid) {
        const n = grid.length, limit = Math.max(1e-6, ...grid.flat().map(Math.abs));
        cells.width = cells.height = n;
        const pixels = cells.getContext("2d").createImageData(n, n);
        grid.flat().forEach((v, i) => {
          const colour = v > 0 ? [210, 69, 47] : [47, 111, 159];
          pixels.data.set([...colour, Math.round(190 * Math.sqrt(Math.abs(v) / limit))], 4 * i);
        });
        cells.getContext("2d").putImageData(pixels, 0, 0);
      }
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      for (const [left, top, right, bottom] of ex.boxes || []) {
        const x = left * w, y = top * h, bw = (right - left) * w, bh = (bottom - top) * h;
        if (grid) ctx.drawImage(cells, x, y, bw, bh);
        ctx.setLineDash([6, 4]);
        ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
        ctx.lineWidth = 2;
        ctx.strokeRect(x + 1, y + 1, bw - 2, bh - 2);
      }
      canvas.dataset.painted = "1";
    };
    box.querySelectorAll(".layers button").forEach((b) => b.addEventListener("click", (ev) => {
      ev.stopPropagation();
      paint(b.dataset.layer);
    }));
    img.addEventListener("load", () => paint("label_drop"), { once: true });
    img.src = state.previews[index];
  }

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
    const evidence = Array.isArray(answer.evidence) ? answer.evidence : [];
    if (evidence.length) {
      html += "<h3>Training photos most like it</h3><ul class=\"evidence\">" + evidence.map((e, i) =>
        `<li data-evidence="${i}">` + (e.image
          ? `<img src="${esc(e.image)}" alt="training photo at ${e.lat.toFixed(3)}, ${e.lon.toFixed(3)}" loading="lazy">`
          : "<span class=\"no-photo\" title=\"the photo is not on the server (or the model records none)\"></span>") +
        `<span class="where">${esc(e.label || "a training place")}<small>${e.lat.toFixed(3)}, ${e.lon.toFixed(3)} · ` +
        `similarity ${e.similarity.toFixed(2)} · ${Math.round(e.km_from_answer).toLocaleString("en")} km from the answer` +
        "</small></span></li>").join("") + "</ul>";
    }
    if (!answer.views && state.files[index]) {
      html += "<div class=\"where-photo\"><button type=\"button\" class=\"explain\">Where in the photo?</button>" +
        "<span class=\"note\">hides each of 64 parts of the photo in turn: 65 runs of the model</span></div>";
    }
    if (Array.isArray(answer.warnings) && answer.warnings.length) {
      html += "<ul class=\"warnings\">" + answer.warnings.map((w) => `<li>${esc(w)}</li>`).join("") + "</ul>";
    }
    card.innerHTML = html;
    card.querySelectorAll(".evidence li").forEach((row) => {
      const e = evidence[Number(row.dataset.evidence)];
      row.addEventListener("click", (ev) => {
        ev.stopPropagation();
        select(index);
        const [x, y] = project(e.lon, e.lat);
        map.fit([x - 2, y - 2, x + 2, y + 2], 70);
      });
    });
    const explain = card.querySelector("button.explain");
    if (explain) {
      explain.addEventListener("click", (ev) => { ev.stopPropagation(); explainPhoto(index, card); });
      if (answer.explanation) drawWhere(card, index, answer.explanation);
    }
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
    state.files = files;
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
    if (map.guesses.length) loadRegions(map.guessCountries()); // answered before the outlines came
  }).catch((err) => setStatus(`map outlines unavailable (${err.message})`, true));
  loadRegions(); // the model's countries: made by the server on its first request, a few seconds
  fetch("model/places").then((r) => r.json()).then((data) => map.drawCoverage(data.places || [])).catch(() => {});
  fetch("model").then((r) => r.json()).then((info) => {
    $("model-name").textContent = `model ${info.name || "?"} · ${info.labels} places`;
  }).catch(() => {});
})();
