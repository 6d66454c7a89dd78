// A compatibility test filter on a second proxy-wasm SDK, AssemblyScript's
// (@solo-io/proxy-runtime), built unchanged from what runs in Envoy. It
// imports WASI under `wasi_unstable`, exports the deprecated `malloc` and ABI
// 0.2.0, and looks its root context up by root id: the host has to match
// Envoy on each.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  stream_context, send_local_response, GrpcStatusValues, HeaderPair, Headers,
  Counter, log, LogLevelValues,
} from "@solo-io/proxy-runtime";

class CompatRoot extends RootContext {
  requests: Counter = new Counter("as_requests");

  createContext(context_id: u32): Context {
    return new CompatFilter(context_id, this);
  }
}

class CompatFilter extends Context {
  root: CompatRoot;

  constructor(context_id: u32, root_context: CompatRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    // Counted with `record` semantics by the SDK: Envoy adds.
    this.root.requests.increment(1);
    const path = stream_context.headers.request.get(":path");
    if (path == "/as-local") {
      const headers: Headers = [];
      headers.push(new HeaderPair(String.UTF8.encode("x-as"), String.UTF8.encode("local")));
      send_local_response(200, "as-local", String.UTF8.encode("assemblyscript says hi\n"),
        headers, GrpcStatusValues.Unknown);
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-as-config", this.root.getConfiguration());
    stream_context.headers.request.add("x-as-method", stream_context.headers.request.get(":method"));
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-status", stream_context.headers.response.get(":status"));
    log(LogLevelValues.info, "compat-as answered " + stream_context.headers.response.get(":status"));
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new CompatRoot(context_id); }, "compat_as");
