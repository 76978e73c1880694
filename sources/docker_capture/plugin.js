// ocpipe's capture plugin, injected into each capture run's workspace copy as
// .opencode/plugins/ocpipe_capture.js. It appends the OpenCode events of interest, one JSON line
// each, to $MAS_CAPTURE_DIR/events/opencode_events.jsonl (the capture dir is mounted at
// /capture), and puts the run's ids into every shell the agent starts (shell.env). A failure
// here never reaches the agent: the capture is valid without these events.
import fs from "node:fs";
import path from "node:path";

const dir = process.env.MAS_CAPTURE_DIR || "/capture";
const file = path.join(dir, "events", "opencode_events.jsonl");
const WANTED = [
  /^session\./,
  /^permission\./,
  /^file\.edited$/,
  /^command\.executed$/,
  /^message\.(updated|removed)$/,
  /^message\.part\.(updated|removed)$/,
];

function write(hook, type, properties) {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const line = JSON.stringify({ time: new Date().toISOString(), hook, type, properties });
    fs.appendFileSync(file, line + "\n");
  } catch {
    // the capture must not break the agent
  }
}

export const OcpipeCapture = async () => ({
  event: async ({ event }) => {
    if (event && WANTED.some((r) => r.test(event.type))) write("event", event.type, event.properties);
  },
  "tool.execute.before": async (input, output) => {
    write("tool.execute.before", "tool.execute.before", { ...input, args: output?.args });
  },
  "tool.execute.after": async (input, output) => {
    write("tool.execute.after", "tool.execute.after", { ...input, title: output?.title, metadata: output?.metadata });
  },
  "permission.ask": async (input) => {
    write("permission.ask", "permission.ask", input);
  },
  "shell.env": async (input, output) => {
    for (const name of ["MAS_RUN_ID", "MAS_CAPTURE_DIR", "MAS_ISSUE_ID"]) {
      if (process.env[name] !== undefined) output.env[name] = process.env[name];
    }
    write("shell.env", "shell.env", { cwd: input?.cwd, sessionID: input?.sessionID, callID: input?.callID });
  },
});
