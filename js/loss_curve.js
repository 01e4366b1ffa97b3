// Live loss curve on "Train Adapter (Temporal Adapter)": the trainer sends one
// "temporal_adapter.loss" event per step ({node, step, steps, total, denoise, temporal, lr}); the
// curve (log scale, one line per term) is drawn under the node's widgets; the node grows to make room
// for it (a workflow saved without this extension may hold a smaller size). Nothing is serialized.
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
			const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
			if (!node || node.comfyClass !== NODE) return;
			if (detail.step === 1 || !node.lossHistory || detail.step <= (node.lossHistory.at(-1)?.step ?? 0)) {
				node.lossHistory = [];
			}
			node.lossHistory.push(detail);
			makeRoom(node);
			node.setDirtyCanvas(true, true);
		});
	},
	beforeRegisterNodeDef(nodeType, nodeData) {
		if (nodeData.name !== NODE) return;
		// In the 2024 front end the node class gets LiteGraph's methods only after this hook, and
		// only those it does not define itself: fall back to LiteGraph's own computeSize at call time.
		const computeSize = nodeType.prototype.computeSize;
		nodeType.prototype.computeSize = function (...args) {
			const size = (computeSize ?? window.LiteGraph.LGraphNode.prototype.computeSize).apply(this, args);
			return [size[0], size[1] + HEIGHT];
		};
		const onDrawForeground = nodeType.prototype.onDrawForeground;
		nodeType.prototype.onDrawForeground = function (ctx) {
			const r = onDrawForeground?.apply(this, arguments);
			if (!this.flags?.collapsed && this.lossHistory) {
				drawCurve(ctx, this.lossHistory, 8, this.size[1] - HEIGHT - 4, this.size[0] - 16, HEIGHT);
			}
			return r;
		};
	},
});
