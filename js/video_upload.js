// Upload button and looping preview for "Load Video (Temporal Adapter)".
// The preview plays the chosen input file (video element; gif/webp as an image). Both widgets are
// added after the node's own widgets and never serialize, so widgets_values keep their order.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOADER = "TA_LoadVideo";
const ACCEPT = "video/*,.mkv,.avi,.mov,.m4v,image/gif,image/webp";
const IMAGE_FILE = /\.(gif|webp)$/i;

function inputUrl(value) {
	const slash = value.lastIndexOf("/");
	const params = new URLSearchParams({
		filename: value.slice(slash + 1),
		subfolder: slash < 0 ? "" : value.slice(0, slash),
		type: "input",
	});
	return api.apiURL(`/view?${params}`);
}

function addPreview(node) {
	const box = document.createElement("div");
	const video = Object.assign(document.createElement("video"), { muted: true, loop: true, autoplay: true, playsInline: true });
	const image = document.createElement("img");
	for (const el of [video, image]) {
		Object.assign(el.style, { width: "100%", height: "100%", objectFit: "contain", display: "none" });
		// a file that is not in the input folder (a shared workflow's clip): no empty preview box
		el.addEventListener("error", () => {
			if (!el.getAttribute("src")) return;
			el.style.display = "none";
			delete box.dataset.shown;
			node.graph?.setDirtyCanvas(true, true);
		});
		box.append(el);
	}
	node.addDOMWidget("video_preview", "preview", box, {
		serialize: false,
		hideOnZoom: false,
		getValue: () => undefined,
		setValue: () => {},
		getHeight: () => (box.dataset.shown ? 200 : 0),
	});
	return (value) => {
		const isImage = IMAGE_FILE.test(value || "");
		video.style.display = value && !isImage ? "" : "none";
		image.style.display = value && isImage ? "" : "none";
		if (!value) {
			delete box.dataset.shown;
			video.removeAttribute("src");
		} else if (isImage) {
			box.dataset.shown = "1";
			video.removeAttribute("src");
			image.src = inputUrl(value);
		} else {
			box.dataset.shown = "1";
			video.src = inputUrl(value);
		}
		node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
		node.graph?.setDirtyCanvas(true, true);
	};
}

async function upload(file) {
	const body = new FormData();
	body.append("image", file);
	const response = await api.fetchApi("/upload/image", { method: "POST", body });
	if (response.status !== 200) {
		throw new Error(`upload of ${file.name} failed: ${response.status} ${response.statusText}`);
	}
	const data = await response.json();
	return data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
}

function attach(node) {
	const videoWidget = node.widgets.find((w) => w.name === "video");
	const show = addPreview(node);
	const chosen = videoWidget.callback;
	videoWidget.callback = function (value) {
		show(value);
		return chosen?.apply(this, arguments);
	};
	requestAnimationFrame(() => show(videoWidget.value));

	const choose = async (file) => {
		try {
			const name = await upload(file);
			if (!videoWidget.options.values.includes(name)) videoWidget.options.values.push(name);
			videoWidget.value = name;
			videoWidget.callback(name);
		} catch (error) {
			alert(error.message);
		}
	};
	const fileInput = Object.assign(document.createElement("input"), {
		type: "file",
		accept: ACCEPT,
		style: "display: none",
		onchange: () => fileInput.files.length && choose(fileInput.files[0]),
	});
	document.body.append(fileInput);
	const button = node.addWidget("button", "upload", null, () => fileInput.click(), { serialize: false });
	button.label = "choose video to upload";
	button.serialize = false;

	node.onDragOver = (e) => [...(e.dataTransfer?.items ?? [])].some((item) => item.kind === "file");
	node.onDragDrop = (e) => {
		const file = e.dataTransfer?.files?.[0];
		if (file) choose(file);
		return !!file;
	};
	const removed = node.onRemoved;
	node.onRemoved = function () {
		fileInput.remove();
		return removed?.apply(this, arguments);
	};
}

app.registerExtension({
	name: "TemporalAdapter.VideoUpload",
	beforeRegisterNodeDef(nodeType, nodeData) {
		if (nodeData.name !== LOADER) return;
		const created = nodeType.prototype.onNodeCreated;
		nodeType.prototype.onNodeCreated = function () {
			const result = created?.apply(this, arguments);
			attach(this);
			return result;
		};
		// A workflow saved before resize_mode existed holds null in its slot (the place of the
		// unserialized upload button): give the widget its default instead.
		const configured = nodeType.prototype.onConfigure;
		nodeType.prototype.onConfigure = function () {
			const result = configured?.apply(this, arguments);
			const mode = this.widgets?.find((w) => w.name === "resize_mode");
			if (mode && !mode.options.values.includes(mode.value)) mode.value = mode.options.values[0];
			return result;
		};
	},
});
