// ComfyUI-Sa2VA: the migration of workflows saved with the Segmentation and Video nodes' flat inputs into the grouped
// layout, without anything of the page (web/sa2va.js applies it; tests/test_groups.py runs it under Node.js).
//
// `layout` is the table nodes/groups.py puts into the node definition (`layout_table`): the flat widget order, the
// grouped widget order with each group's choices, and the defaults. A node whose widget values follow the flat order
// gets, for each group, the first choice that keeps every saved value (nodes/groups.py, `choose`), then that choice's
// inputs. Unconnected widget inputs are dropped (the page adds them again); connected ones are renamed.

export function savedFlat(layout, values) {
  if (!Array.isArray(values) || values.length === 0 || values.length > layout.flat.length) return false;
  return values.every((value, i) => typeof value === typeof layout.defaults[layout.flat[i]]);
}

export function choose(group, flat, defaults, shown) {
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

export function migrateNode(node, layout, links) {
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

export function migrateGraph(graph, found) {
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
