"use strict";
// An independent Modbus TCP server (modbus-serial ServerTCP) with a fixed,
// known register map, for testing the Python driver against something that is
// not pymodbus.
//
//   node modbus_server.js [PORT]      (PORT 0 or absent: any free port)
//
// Prints "READY <port>" on stdout once listening on 127.0.0.1; stops on
// SIGTERM/SIGINT or when stdin closes. The map (keep in sync with
// tests/devices/test_modbus.py, PEER_MAP):
//
//   holding 0      int16   -1234
//   holding 1      uint16  65000
//   holding 2-3    int32   -123456           big word order  (ABCD)
//   holding 4-5    uint32  4000000000        little word order (CDAB)
//   holding 6-7    float32 21.5              big word order
//   holding 8-9    float32 -0.1              little word order
//   holding 10-13  float64 1234.5678         big word order
//   holding 14     int16   1234              bytes swapped within the register (BA)
//   holding 15-19  0
//   input   0-9    100 + address
//   coils   0-15   true when address is even
//   discrete 0-15  true when address is a multiple of 3
//   holding 500    exception 06 (server device busy)
//   holding 501    exception 04 (server device failure)
//   holding 502    exception 0B (gateway target failed to respond)
//   holding 600    answers after 1.5 s (slow device)
//   anything else  exception 02 (illegal data address)

const ModbusRTU = require("modbus-serial");

const SIZE = 20;
const holding = Buffer.alloc(SIZE * 2);
holding.writeInt16BE(-1234, 0);
holding.writeUInt16BE(65000, 2);
holding.writeInt32BE(-123456, 4);
const u32 = Buffer.alloc(4);
u32.writeUInt32BE(4000000000, 0);
u32.copy(holding, 8, 2, 4); // low word first
u32.copy(holding, 10, 0, 2);
holding.writeFloatBE(21.5, 12);
const f32 = Buffer.alloc(4);
f32.writeFloatBE(-0.1, 0);
f32.copy(holding, 16, 2, 4);
f32.copy(holding, 18, 0, 2);
holding.writeDoubleBE(1234.5678, 20);
holding.writeInt16LE(1234, 28);

function illegal(address) {
    return { modbusErrorCode: 0x02, msg: `illegal data address ${address}` };
}

function holdingRegister(address, unitID, callback) {
    if (address === 500) return callback({ modbusErrorCode: 0x06, msg: "busy" });
    if (address === 501) return callback({ modbusErrorCode: 0x04, msg: "failure" });
    if (address === 502) return callback({ modbusErrorCode: 0x0b, msg: "gateway" });
    if (address === 600) return setTimeout(() => callback(null, 600), 1500);
    if (address >= SIZE) return callback(illegal(address));
    return callback(null, holding.readUInt16BE(address * 2));
}

const vector = {
    getHoldingRegister: holdingRegister,
    getInputRegister(address, unitID, callback) {
        if (address >= 10) return callback(illegal(address));
        return callback(null, 100 + address);
    },
    getCoil(address, unitID, callback) {
        if (address >= 16) return callback(illegal(address));
        return callback(null, address % 2 === 0);
    },
    getDiscreteInput(address, unitID, callback) {
        if (address >= 16) return callback(illegal(address));
        return callback(null, address % 3 === 0);
    },
    setRegister(address, value, unitID, callback) {
        if (address >= SIZE) return callback(illegal(address));
        holding.writeUInt16BE(value, address * 2);
        return callback(null);
    },
    setCoil(address, value, unitID, callback) {
        return callback(illegal(address));
    },
};

// ServerTCP falls back to port 502 for a falsy port; a string "0" asks the OS.
const port = String(Number.parseInt(process.argv[2] || "0", 10));
const server = new ModbusRTU.ServerTCP(vector, { host: "127.0.0.1", port, unitID: 1 });
server.on("initialized", () => {
    process.stdout.write(`READY ${server._server.address().port}\n`);
});
server.on("serverError", (err) => {
    process.stderr.write(`modbus peer: ${err}\n`);
    process.exit(1);
});
server.on("socketError", () => {}); // a client going away is not our problem

function stop() {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.resume();
