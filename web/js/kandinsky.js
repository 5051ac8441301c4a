// Kandinsky 2 pack: colours for the pack's link types, and Kandinsky Interpolate showing only the slots in use.
import { app } from "../../../scripts/app.js";

export const LINK_COLORS = {
  KANDINSKY2_PRIOR: "#C08AFF",
  KANDINSKY2_MOVQ: "#FF8A8A",
  KANDINSKY2_DEPTH_MODEL: "#7FD4C1",
};
const SLOTS = 4;

function slotUsed(node, i) {
  const value = (name) => node.widgets.find((w) => w.name === `${name}_${i}`)?.value;
  const linked = (name) => node.inputs?.some((input) => input.name === `${name}_${i}` && input.link != null);
  return value("weight") !== 0 || String(value("text") ?? "").trim() !== "" || linked("image") || linked("embedding");
}

// The text and weight rows of unused slots are hidden, except the first one, which is where the next slot is added;
// filling it shows the one after. Hidden widgets keep their values, so the prompt is unchanged.
export function updateSlots(node) {
  let spare = true;
  for (let i = 1; i <= SLOTS; i++) {
    const used = slotUsed(node, i);
    const show = used || spare;
    if (!used && show) spare = false;
    for (const widget of node.widgets) {
      if (widget.name === `text_${i}` || widget.name === `weight_${i}`) widget.hidden = !show;
    }
  }
  node.setSize([node.size[0], node.computeSize()[1]]);
  node.setDirtyCanvas(true, true);
}

// The frontend resets every known type's colour to "" (default) whenever it applies a colour palette; a palette
// that names these types still wins, the reset does not.
function keepColor(map, type, color) {
  Object.defineProperty(map, type, {
    enumerable: true,
    configurable: true,
    get: () => color,
    set: (value) => {
      if (value) color = value;
    },
  });
}

app.registerExtension({
  name: "kandinsky2.web",
  setup() {
    for (const [type, color] of Object.entries(LINK_COLORS)) {
      keepColor(LGraphCanvas.link_type_colors, type, color);
      keepColor(app.canvas.default_connection_color_byType, type, color);
    }
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "Kandinsky2Interpolate") return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      for (const widget of this.widgets) {
        if (!/^(text|weight)_\d$/.test(widget.name)) continue;
        const callback = widget.callback;
        widget.callback = (...args) => {
          callback?.apply(widget, args);
          updateSlots(this);
        };
      }
      updateSlots(this);
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      onConfigure?.apply(this, arguments);
      updateSlots(this);
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      onConnectionsChange?.apply(this, arguments);
      if (this.widgets) updateSlots(this);
    };
  },
});
