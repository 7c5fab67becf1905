// The inpainting editor: a test-set picker or an upload, and a mask drawn with brush / rectangle tools
// or chosen from presets. The mask lives at the model's resolution (1 = generate); it is sent as a PNG of
// that size, white = generate, black = keep (the convention of fractalgm.masks.from_png).
const $ = (id) => document.getElementById(id);

export class Editor {
  constructor(onError) {
    this.canvas = $("editor");
    this.ctx = this.canvas.getContext("2d");
    this.onError = onError;
    this.size = 28;
    this.image = null;       // HTMLImageElement of the picture (any size; shown stretched to the canvas)
    this.source = null;      // {kind: "testset", index} | {kind: "upload", file}
    this.mask = new Uint8Array(28 * 28);
    this.pickerStart = 0;
    this.drag = null;
    this.bind();
  }

  setModel(info) {
    this.info = info;
    this.size = info.image_size;
    this.mask = new Uint8Array(this.size * this.size);
    this.image = null; this.source = null;
    this.pickerStart = 0;
    this.loadPicker();
    this.draw();
  }

  bind() {
    const c = this.canvas;
    c.addEventListener("mousedown", (e) => { e.preventDefault(); this.drag = { start: this.cell(e), now: this.cell(e) };
                                            if (this.tool() !== "rect") this.paint(this.drag.now); this.draw(); });
    c.addEventListener("mousemove", (e) => { if (!this.drag) return; this.drag.now = this.cell(e);
                                            if (this.tool() !== "rect") this.paint(this.drag.now); this.draw(); });
    window.addEventListener("mouseup", () => {
      if (!this.drag) return;
      if (this.tool() === "rect") this.fillRect(this.drag.start, this.drag.now);
      this.drag = null; this.draw();
    });
    $("mask-clear").addEventListener("click", () => { this.mask.fill(0); this.preset = null; this.draw(); });
    document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => this.applyPreset(b.dataset.preset)));
    $("picker-prev").addEventListener("click", () => { this.pickerStart = Math.max(0, this.pickerStart - 24); this.loadPicker(); });
    $("picker-next").addEventListener("click", () => { this.pickerStart += 24; this.loadPicker(); });
    $("upload").addEventListener("change", (e) => this.useUpload(e.target.files[0]));
  }

  tool() { return document.querySelector("input[name=tool]:checked").value; }

  cell(e) {
    const r = this.canvas.getBoundingClientRect();
    const clamp = (v) => Math.max(0, Math.min(this.size - 1, v));
    return [clamp(Math.floor((e.clientY - r.top) / r.height * this.size)),
            clamp(Math.floor((e.clientX - r.left) / r.width * this.size))];
  }

  paint([y, x]) {
    const radius = Math.max(1, +$("brush-size").value || 1) / 2, value = this.tool() === "erase" ? 0 : 1;
    const S = this.size;
    for (let i = 0; i < S; i++) for (let j = 0; j < S; j++)
      if ((i + 0.5 - (y + 0.5)) ** 2 + (j + 0.5 - (x + 0.5)) ** 2 <= radius * radius) this.mask[i * S + j] = value;
  }

  fillRect([y0, x0], [y1, x1]) {
    const S = this.size;
    for (let i = Math.min(y0, y1); i <= Math.max(y0, y1); i++)
      for (let j = Math.min(x0, x1); j <= Math.max(x0, x1); j++) this.mask[i * S + j] = 1;
  }

  applyPreset(name) {
    // the same regions as fractalgm.masks (half, outpaint, uncrop), drawn here so they can be touched up
    const S = this.size, h = Math.floor(S / 2), px = Math.max(0, +$("preset-pixels").value || 0);
    const keepSide = name === "uncrop" ? Math.min(px, S) : Math.max(0, S - 2 * px);
    const a = Math.floor((S - keepSide) / 2);
    for (let i = 0; i < S; i++) for (let j = 0; j < S; j++) {
      let gen;
      if (name === "half_left") gen = j < h;
      else if (name === "half_right") gen = j >= S - h;
      else if (name === "half_top") gen = i < h;
      else if (name === "half_bottom") gen = i >= S - h;
      else gen = !(i >= a && i < a + keepSide && j >= a && j < a + keepSide);
      this.mask[i * S + j] = gen ? 1 : 0;
    }
    this.draw();
  }

  async loadPicker() {
    const picker = $("picker");
    picker.replaceChildren();
    if (!this.info || !this.info.testset) { $("picker-range").textContent = "no test set for this model: upload an image"; return; }
    const total = this.info.testset_size;
    this.pickerStart = Math.min(this.pickerStart, Math.max(0, total - 24));
    const resp = await fetch(`/api/models/${encodeURIComponent(this.info.name)}/testset?start=${this.pickerStart}&count=24`);
    const body = await resp.json();
    if (!resp.ok) { this.onError(resp.status, body.detail); return; }
    $("picker-range").textContent = `${this.info.testset} test images ${this.pickerStart}–${this.pickerStart + body.items.length - 1} of ${total}`;
    for (const item of body.items) {
      const img = document.createElement("img");
      img.src = item.png; img.alt = `test image ${item.index} (${item.class_name})`; img.title = img.alt;
      img.dataset.index = item.index;
      img.addEventListener("click", () => this.useTestImage(item, img));
      picker.append(img);
    }
  }

  useTestImage(item, element) {
    document.querySelectorAll(".picker img").forEach((i) => i.classList.toggle("selected", i === element));
    this.source = { kind: "testset", index: item.index };
    $("source-info").textContent = `test image ${item.index}: ${item.class_name} (label ${item.label})`;
    this.showPicture(item.png);
  }

  useUpload(file) {
    if (!file) return;
    document.querySelectorAll(".picker img").forEach((i) => i.classList.remove("selected"));
    this.source = { kind: "upload", file };
    $("source-info").textContent = `uploaded ${file.name} (${file.size.toLocaleString()} bytes; centre-cropped to ${this.size}×${this.size} by the server)`;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => { this.image = img; this.draw(); };
    img.onerror = () => { this.image = null; this.draw(); };  // the server explains what is wrong with it
    img.src = url;
  }

  showPicture(src) {
    const img = new Image();
    img.onload = () => { this.image = img; this.draw(); };
    img.src = src;
  }

  draw() {
    const { ctx, canvas } = this, S = this.size, k = canvas.width / S;
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#888"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (this.image) ctx.drawImage(this.image, 0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "rgba(255, 40, 40, 0.55)";
    for (let i = 0; i < S; i++) for (let j = 0; j < S; j++) if (this.mask[i * S + j]) ctx.fillRect(j * k, i * k, k, k);
    if (this.drag && this.tool() === "rect") {
      const [y0, x0] = this.drag.start, [y1, x1] = this.drag.now;
      ctx.strokeStyle = "#ff2828"; ctx.lineWidth = 2;
      ctx.strokeRect(Math.min(x0, x1) * k, Math.min(y0, y1) * k, (Math.abs(x1 - x0) + 1) * k, (Math.abs(y1 - y0) + 1) * k);
    }
  }

  maskBlob() {
    const S = this.size, c = document.createElement("canvas");
    c.width = S; c.height = S;
    const cx = c.getContext("2d"), data = cx.createImageData(S, S);
    for (let p = 0; p < S * S; p++) {
      const v = this.mask[p] ? 255 : 0;
      data.data.set([v, v, v, 255], p * 4);
    }
    cx.putImageData(data, 0, 0);
    return new Promise((resolve) => c.toBlob(resolve, "image/png"));
  }

  generatedCount() { return this.mask.reduce((a, b) => a + b, 0); }
}
