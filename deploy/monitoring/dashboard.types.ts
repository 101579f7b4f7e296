// The shape dashboard.json must have, from Grafana's own published types
// (@grafana/schema, pinned in deploy/tools/package.json). check-dashboard
// type-checks the JSON as a literal of ChatradioDashboard with tsc --strict:
// a missing required option, a wrong type, an unknown key or an unknown enum
// value fails it.
import type { Dashboard, DataQuery, FieldConfigSource, Panel, RowPanel } from "@grafana/schema";
import type {
  FieldConfig as TimeSeriesFieldConfig,
  Options as TimeSeriesOptions,
} from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";
import type {
  FieldConfig as HeatmapFieldConfig,
  Options as HeatmapOptions,
} from "@grafana/schema/dist/esm/raw/composable/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen";
import type { Options as StatOptions } from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";

// Grafana declares its option values as TypeScript enums, which a JSON
// literal can never be assigned to; this maps every string enum to the union
// of its values ("list" | "table" | ...) and leaves the rest of the type as is.
type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends readonly (infer E)[]
      ? Json<E>[]
      : { [K in keyof T]: Json<T[K]> };

// A Prometheus data source query: the common DataQuery plus what the
// Prometheus plugin reads.
interface PrometheusQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  format?: "time_series" | "table" | "heatmap";
  range?: boolean;
  instant?: boolean;
}

type TypedPanel<TType extends string, TOptions, TFieldConfig> = Omit<
  Panel<TOptions, TFieldConfig>,
  "type" | "options" | "fieldConfig" | "targets"
> & {
  type: TType;
  options: TOptions;
  fieldConfig: FieldConfigSource<TFieldConfig>;
  targets: PrometheusQuery[];
};

export type ChatradioPanel =
  | TypedPanel<"timeseries", TimeSeriesOptions, TimeSeriesFieldConfig>
  | TypedPanel<"heatmap", HeatmapOptions, HeatmapFieldConfig>
  | TypedPanel<"stat", StatOptions, Record<string, never>>;

export type ChatradioDashboard = Json<Omit<Dashboard, "panels"> & { panels: Array<ChatradioPanel | RowPanel> }>;
