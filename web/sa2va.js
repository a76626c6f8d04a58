// ComfyUI-Sa2VA in the page: workflows saved with the Segmentation and Video nodes' flat inputs (every version
// before the grouped layout, and any ComfyUI without DynamicCombo) open with their values in the grouped layout.
//
// Where the running ComfyUI groups the nodes' inputs (nodes/groups.py), the node definition carries the layout
// table on its first grouped input; before a workflow is configured, web/migrate.js rewrites each of these nodes
// whose widget values follow the flat order.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { migrateGraph } from "./migrate.js";

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
