/*
 * The floor of Traffic Server's response transform machinery, for
 * scripts/bench/callgrind-ats.sh (row null-transform, issue 15): a remap
 * plugin that adds a response transform to every transaction of its rule and
 * passes the body through unchanged, with the least work the transform API
 * allows (no copy of the bytes: the input's blocks are shared with the
 * output buffer by TSIOBufferCopy). What this row adds over `base` is what
 * any plugin that takes the response body pays to Traffic Server itself
 * (transform VConnection, its VIOs, the tunnel through the transform and its
 * events), before any plugin work.
 *
 *   cc -shared -fPIC -O2 -o ts_null_transform.so ts_null_transform.c
 */
#include <stdint.h>
#include <stdlib.h>

#include <ts/ts.h>
#include <ts/remap.h>

/* The output side of one transform, made at its first event. */
struct null_transform {
  TSIOBuffer out_buf;
  TSIOBufferReader out_reader;
  TSVIO out_vio;
};

static void
null_transform_close(TSCont contp)
{
  struct null_transform *t = TSContDataGet(contp);
  if (t->out_buf) {
    TSIOBufferReaderFree(t->out_reader);
    TSIOBufferDestroy(t->out_buf);
  }
  free(t);
  TSContDestroy(contp);
}

/* Moves what the input VIO has to the output, then tells the input's writer
 * (the tunnel) that it can write more, or that its write is complete. */
static void
null_transform_step(TSCont contp)
{
  struct null_transform *t = TSContDataGet(contp);
  TSVIO in = TSVConnWriteVIOGet(contp);
  if (!t->out_vio) {
    t->out_buf = TSIOBufferCreate();
    t->out_reader = TSIOBufferReaderAlloc(t->out_buf);
    /* The input's length (the origin's Content-Length, or INT64_MAX). */
    t->out_vio = TSVConnWrite(TSTransformOutputVConnGet(contp), contp, t->out_reader, TSVIONBytesGet(in));
  }
  if (!TSVIOBufferGet(in)) {
    /* The writer is gone: the output ends with what it got. */
    TSVIONBytesSet(t->out_vio, TSVIONDoneGet(in));
    TSVIOReenable(t->out_vio);
    return;
  }
  int64_t todo = TSVIONTodoGet(in);
  int64_t n = 0;
  if (todo > 0) {
    TSIOBufferReader reader = TSVIOReaderGet(in);
    n = TSIOBufferReaderAvail(reader);
    if (n > todo) {
      n = todo;
    }
    if (n > 0) {
      TSIOBufferCopy(t->out_buf, reader, n, 0);
      TSIOBufferReaderConsume(reader, n);
      TSVIONDoneSet(in, TSVIONDoneGet(in) + n);
    }
  }
  if (TSVIONTodoGet(in) > 0) {
    if (n > 0) {
      TSVIOReenable(t->out_vio);
      TSContCall(TSVIOContGet(in), TS_EVENT_VCONN_WRITE_READY, in);
    }
  } else {
    TSVIONBytesSet(t->out_vio, TSVIONDoneGet(in));
    TSVIOReenable(t->out_vio);
    TSContCall(TSVIOContGet(in), TS_EVENT_VCONN_WRITE_COMPLETE, in);
  }
}

static int
null_transform_event(TSCont contp, TSEvent event, void *edata)
{
  (void)edata;
  if (TSVConnClosedGet(contp)) {
    null_transform_close(contp);
    return 0;
  }
  switch (event) {
  case TS_EVENT_ERROR: {
    TSVIO in = TSVConnWriteVIOGet(contp);
    TSContCall(TSVIOContGet(in), TS_EVENT_ERROR, in);
    break;
  }
  case TS_EVENT_VCONN_WRITE_COMPLETE:
    /* The output's reader took everything: no more output. */
    TSVConnShutdown(TSTransformOutputVConnGet(contp), 0, 1);
    break;
  default:
    null_transform_step(contp);
    break;
  }
  return 0;
}

TSReturnCode
TSRemapInit(TSRemapInterface *api, char *errbuf, int errbuf_size)
{
  (void)api;
  (void)errbuf;
  (void)errbuf_size;
  return TS_SUCCESS;
}

TSReturnCode
TSRemapNewInstance(int argc, char *argv[], void **ih, char *errbuf, int errbuf_size)
{
  (void)argc;
  (void)argv;
  (void)errbuf;
  (void)errbuf_size;
  *ih = NULL;
  return TS_SUCCESS;
}

void
TSRemapDeleteInstance(void *ih)
{
  (void)ih;
}

TSRemapStatus
TSRemapDoRemap(void *ih, TSHttpTxn txnp, TSRemapRequestInfo *rri)
{
  (void)ih;
  (void)rri;
  TSVConn connp = TSTransformCreate(null_transform_event, txnp);
  TSContDataSet(connp, calloc(1, sizeof(struct null_transform)));
  TSHttpTxnHookAdd(txnp, TS_HTTP_RESPONSE_TRANSFORM_HOOK, connp);
  return TSREMAP_NO_REMAP;
}
