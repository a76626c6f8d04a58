// ComfyUI-Sa2VA in the page: workflows saved with the Segmentation and Video nodes' flat inputs (every version
// before the grouped layout, and any ComfyUI without DynamicCombo) open with their values in the grouped layout.
//
// Where the running ComfyUI groups the nodes' inputs (nodes/groups.py), the node definition carries the layout
// table (flat widget order, grouped widget order, the choices, the defaults) on its first grouped input. Before a
// workflow is configured, each of these nodes whose widget values follow the flat order gets the grouped values:
// for each group, the first choice that keeps every saved value (nodes/groups.py, `choose`), then that choice's
// inputs. Unconnected widget inputs are dropped (the page adds them again); connected ones are renamed.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODES = ["Sa2VASegmentation", "Sa2VAVideoSegmentation"];
const LAYOUT_KEY = "sa2va_layout";
let layouts = null;

async function loadLayouts() {
  if (layouts !== null) return layouts;
  const found = {};
  for (const type of NODES) {
    const response = await api.fetchApi(`/object_info/${type}`);
    if (!response.ok) continue;
    const definition = (await response.json())[type];
    for (const section of ["required", "optional"]) {
      for (const spec of Object.values(definition?.input?.[section] ?? {})) {
        const table = Array.isArray(spec) ? spec[1]?.[LAYOUT_KEY] : undefined;
        if (table) found[type] = table;
      }
    }
  }
  layouts = found;
  return layouts;
}

function savedFlat(layout, values) {
  if (!Array.isArray(values) || values.length === 0 || values.length > layout.flat.length) return false;
  return values.every((value, i) => typeof value === typeof layout.defaults[layout.flat[i]]);
}

function choose(group, flat, defaults, shown) {
  const value = (name) => (name in flat ? flat[name] : defaults[name]);
  for (const choice of group.choices) {
    if (Object.entries(choice.sets).some(([name, set]) => value(name) !== set)) continue;
    const hidden = group.names.filter(
      (n) => !choice.inputs.includes(n) && !choice.ignores.includes(n) && !(n in choice.sets));
    if (hidden.some((n) => value(n) !== defaults[n])) continue;
    if (shown.filter((n) => group.names.includes(n)).every((n) => choice.inputs.includes(n))) return choice;
  }
  return group.choices[group.choices.length - 1];
}

function migrateNode(node, layout, links) {
  const flat = {};
  layout.flat.forEach((name, i) => {
    if (i < node.widgets_values.length) flat[name] = node.widgets_values[i];
  });
  const inputs = node.inputs ?? [];
  const linked = inputs.filter((i) => i.widget && i.link != null).map((i) => i.widget.name);
  const values = [];
  const renamed = {};
  for (const entry of layout.grouped) {
    if (typeof entry === "string") {
      values.push(entry in flat ? flat[entry] : layout.defaults[entry]);
      continue;
    }
    const choice = choose(entry, flat, layout.defaults, linked);
    values.push(choice.key);
    for (const name of choice.inputs) {
      values.push(name in flat ? flat[name] : layout.defaults[name]);
      renamed[name] = `${entry.group}.${name}`;
    }
  }
  node.widgets_values = values;
  node.inputs = inputs
    .filter((i) => !i.widget || i.link != null)
    .map((i) => {
      const name = i.widget ? renamed[i.widget.name] : undefined;
      return name ? { ...i, name, widget: { name } } : i;
    });
  node.inputs.forEach((input, slot) => {
    if (input.link == null) return;
    for (const link of links ?? []) {
      if (Array.isArray(link) && link[0] === input.link) link[4] = slot;
      else if (link && link.id === input.link) link.target_slot = slot;
    }
  });
}

function migrateGraph(graph, found) {
  let count = 0;
  for (const node of graph?.nodes ?? []) {
    const layout = found[node.type];
    if (layout && savedFlat(layout, node.widgets_values)) {
      migrateNode(node, layout, graph.links);
      count += 1;
    }
  }
  return count;
}

app.registerExtension({
  name: "Sa2VA.GroupedInputs",
  async beforeConfigureGraph(graphData) {
    if (!graphData?.nodes?.some((n) => NODES.includes(n.type)) &&
        !graphData?.definitions?.subgraphs?.length) return;
    const found = await loadLayouts();
    if (!Object.keys(found).length) return;
    let count = migrateGraph(graphData, found);
    for (const subgraph of graphData.definitions?.subgraphs ?? []) count += migrateGraph(subgraph, found);
    if (count) console.info(`ComfyUI-Sa2VA: ${count} node(s) saved with the flat inputs opened in the grouped layout`);
  },
});
