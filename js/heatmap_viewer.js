// Viewer for "Attention Heatmaps (Temporal Adapter)": pick a word, scrub frames, play as animation.
// The node sends one sprite sheet per word (its frames in a grid of `columns`, each `cell` pixels);
// the viewer draws one cell on a canvas. The widget never serializes, so widgets_values keep their order.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "TA_AttentionHeatmaps";
const FPS = 6;
const HEIGHT = 300;

function viewUrl(entry) {
	const params = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder, type: entry.type });
	return api.apiURL(`/view?${params}`);
}

function loadImage(url) {
	return new Promise((resolve, reject) => {
		const image = new Image();
		image.onload = () => resolve(image);
		image.onerror = () => reject(new Error(`heatmap sheet failed to load: ${url}`));
		image.src = url;
	});
}

function element(tag, props, style) {
	const el = Object.assign(document.createElement(tag), props);
	Object.assign(el.style, style);
	return el;
}

function addViewer(node) {
	const box = element("div", { className: "ta-heatmap-viewer" }, { display: "none", flexDirection: "column", gap: "4px", height: "100%" });
	const canvas = element("canvas", {}, { width: "100%", flex: "1", minHeight: "0", objectFit: "contain", imageRendering: "pixelated" });
	const bar = element("div", {}, { display: "flex", gap: "4px", alignItems: "center" });
	const word = element("select", { title: "word" }, { maxWidth: "40%" });
	const frame = element("input", { type: "range", min: 0, max: 0, value: 0, title: "frame" }, { flex: "1" });
	const play = element("button", { textContent: "play", title: "play the frames as an animation" });
	const label = element("span", {}, { fontSize: "11px", minWidth: "5em", color: "var(--input-text, #ddd)" });
	bar.append(word, frame, play, label);
	box.append(canvas, bar);
	node.addDOMWidget("heatmap_viewer", "preview", box, {
		serialize: false,
		hideOnZoom: false,
		getValue: () => undefined,
		setValue: () => {},
		getHeight: () => (box.dataset.shown ? HEIGHT : 0),
	});

	const state = { data: null, sheets: [], timer: null };
	const draw = () => {
		const { data, sheets } = state;
		const sheet = sheets[+word.value];
		if (!data || !sheet) return;
		const f = +frame.value;
		const [w, h] = data.cell;
		canvas.width = w;
		canvas.height = h;
		const context = canvas.getContext("2d");
		context.drawImage(sheet, (f % data.columns) * w, Math.floor(f / data.columns) * h, w, h, 0, 0, w, h);
		label.textContent = `frame ${f + 1}/${data.frames}`;
		Object.assign(canvas.dataset, { word: word.value, frame: String(f) });
	};
	const stop = () => {
		clearInterval(state.timer);
		state.timer = null;
		play.textContent = "play";
	};
	word.onchange = draw;
	frame.oninput = draw;
	play.onclick = () => {
		if (state.timer) return stop();
		play.textContent = "pause";
		state.timer = setInterval(() => {
			frame.value = String((+frame.value + 1) % state.data.frames);
			draw();
		}, 1000 / FPS);
	};

	const show = async (data) => {
		stop();
		const sheets = await Promise.all(data.sheets.map((s) => loadImage(viewUrl(s))));
		Object.assign(state, { data, sheets });
		word.replaceChildren(...data.words.map((w, i) => element("option", { value: String(i), textContent: w })));
		frame.max = String(data.frames - 1);
		frame.value = "0";
		box.style.display = "flex";
		box.dataset.shown = "1";
		draw();
		canvas.dataset.ready = String((+canvas.dataset.ready || 0) + 1);
		node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
		node.graph?.setDirtyCanvas(true, true);
	};
	const removed = node.onRemoved;
	node.onRemoved = function () {
		stop();
		return removed?.apply(this, arguments);
	};
	return show;
}

app.registerExtension({
	name: "TemporalAdapter.HeatmapViewer",
	beforeRegisterNodeDef(nodeType, nodeData) {
		if (nodeData.name !== NODE) return;
		const created = nodeType.prototype.onNodeCreated;
		nodeType.prototype.onNodeCreated = function () {
			const result = created?.apply(this, arguments);
			this.showHeatmaps = addViewer(this);
			return result;
		};
		const executed = nodeType.prototype.onExecuted;
		nodeType.prototype.onExecuted = function (output) {
			const result = executed?.apply(this, arguments);
			const data = output?.ta_heatmaps?.[0];
			if (data) this.showHeatmaps(data).catch((error) => console.error(error));
			return result;
		};
	},
});
