import { parsePageSize } from "./flags.js";
import type { FlagSpec, ParsedFlags } from "./parse-command-line.js";

/** `--page-size` and `--page-token` of a list command; `noun` names what is listed ("sessions"). */
export function pageFlags(noun: string, serverDefault: number): FlagSpec[] {
  return [
    { name: "page-size", type: "string", value: "N", description: `${noun} per page, 1 to 1000 (server default ${serverDefault})` },
    { name: "page-token", type: "string", value: "TOKEN", description: "continue from this page" },
  ];
}

/** The `page_size` (0: the server's default) and `page_token` of a list request, from {@link pageFlags}. */
export function pageOf(flags: ParsedFlags): { pageSize: number; pageToken: string } {
  const pageSize = flags.string("page-size");
  return {
    pageSize: pageSize === undefined ? 0 : parsePageSize("--page-size", pageSize),
    pageToken: flags.string("page-token") ?? "",
  };
}

/** A page's table, followed by how to ask for the next page when there is one. */
export function withNextPage(table: string, nextPageToken: string, alternative = ""): string {
  return nextPageToken === "" ? table : `${table}\n\nmore: --page-token ${nextPageToken}${alternative}`;
}
