// Live loss curve on "Train Adapter (Temporal Adapter)": the trainer sends one
// "temporal_adapter.loss" event per step ({node, step, steps, total, denoise, temporal, lr}); the
// curve (log scale, one line per term) is drawn on a canvas under the node's widgets, in either node
// renderer; the node grows to make room for it (a workflow saved without this extension may hold a
// smaller size). Nothing is serialized.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "TA_TrainAdapter";
const EVENT = "temporal_adapter.loss";
const HEIGHT = 140;
const TERMS = [["total", "#e0e0e0"], ["denoise", "#4a9fe0"], ["temporal", "#e05050"]];

function drawCurve(ctx, history, x0, y0, width, height) {
	ctx.save();
	ctx.fillStyle = "#1b1b1b";
	ctx.fillRect(x0, y0, width, height);
	if (history.length) {
		const log = (v) => Math.log10(Math.max(v, 1e-12));
		const values = history.flatMap((r) => TERMS.map(([k]) => log(r[k])));
		const lo = Math.min(...values);
		const hi = Math.max(...values) > lo ? Math.max(...values) : lo + 1;
		const first = history[0].step;
		const span = Math.max(history[history.length - 1].step - first, 1);
		TERMS.forEach(([key, colour], row) => {
			ctx.strokeStyle = colour;
			ctx.beginPath();
			history.forEach((r, i) => {
				const x = x0 + ((r.step - first) / span) * width;
				const y = y0 + height - ((log(r[key]) - lo) / (hi - lo)) * (height - 16);
				i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
			});
			ctx.stroke();
			ctx.fillStyle = colour;
			ctx.font = "10px sans-serif";
			ctx.fillText(`${key} ${history[history.length - 1][key].toPrecision(4)}`, x0 + 4 + row * (width / 3), y0 + 11);
		});
		const last = history[history.length - 1];
		ctx.fillStyle = "#aaa";
		ctx.fillText(`step ${last.step}/${last.steps}`, x0 + 4, y0 + height - 4);
	}
	ctx.restore();
}

// The curve is a <canvas> in a DOM widget under the node's widgets: both of the front end's node renderers
// show DOM widgets (the canvas renderer places them over the graph, the Vue one inside its node), while
// only the canvas renderer calls LiteGraph's onDrawForeground. The widget keeps HEIGHT px for it.
function addCurve(node) {
	const canvas = Object.assign(document.createElement("canvas"), { className: "ta-loss-curve" });
	Object.assign(canvas.style, { width: "100%", height: `${HEIGHT}px`, display: "block" });
	const widget = node.addDOMWidget("loss_curve", "preview", canvas, {
		serialize: false,
		hideOnZoom: false,
		getValue: () => undefined,
		setValue: () => {},
		getHeight: () => HEIGHT,
		getMinHeight: () => HEIGHT,
		getMaxHeight: () => HEIGHT,
	});
	widget.serialize = false;
	const draw = () => {
		const history = node.lossHistory;
		// the bitmap follows the size the renderer lays the element out at (the Vue nodes stretch it to
		// fill the node), so the curve is drawn crisp instead of scaled
		const width = Math.max(Math.round(canvas.clientWidth || node.size[0] - 16), 1);
		const height = Math.max(Math.round(canvas.clientHeight || HEIGHT), 1);
		if (canvas.width !== width) canvas.width = width;
		if (canvas.height !== height) canvas.height = height;
		const ctx = canvas.getContext("2d");
		ctx.clearRect(0, 0, canvas.width, canvas.height);
		if (history?.length) drawCurve(ctx, history, 0, 0, width, height);
		canvas.dataset.steps = String(history?.length ?? 0);
	};
	if (typeof ResizeObserver !== "undefined") {
		const observer = new ResizeObserver(() => node.lossHistory?.length && draw());
		observer.observe(canvas);
		const removed = node.onRemoved;
		node.onRemoved = function () {
			observer.disconnect();
			return removed?.apply(this, arguments);
		};
	}
	return draw;
}

function makeRoom(node) {
	const [width, height] = node.computeSize();
	if (node.size[0] < width || node.size[1] < height) {
		node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
	}
}

app.registerExtension({
	name: "temporal_adapter.loss_curve",
	setup() {
		api.addEventListener(EVENT, ({ detail }) => {
			const node = app.graph?.getNodeById(detail.node) ?? app.graph?.getNodeById(Number(detail.node));
			if (!node || node.comfyClass !== NODE) return;
			if (detail.step === 1 || !node.lossHistory || detail.step <= (node.lossHistory.at(-1)?.step ?? 0)) {
				node.lossHistory = [];
			}
			node.lossHistory.push(detail);
			makeRoom(node);
			node.drawLossCurve?.();
			node.setDirtyCanvas(true, true);
		});
	},
	beforeRegisterNodeDef(nodeType, nodeData) {
		if (nodeData.name !== NODE) return;
		const created = nodeType.prototype.onNodeCreated;
		nodeType.prototype.onNodeCreated = function () {
			const result = created?.apply(this, arguments);
			this.drawLossCurve = addCurve(this);
			return result;
		};
	},
});
