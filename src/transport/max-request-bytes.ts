/**
 * The largest request message either listener reads, after decompression:
 * grpc-js's default `grpc.max_receive_message_length`, set on both so that
 * a request one port refuses the other does not decide.
 */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;
