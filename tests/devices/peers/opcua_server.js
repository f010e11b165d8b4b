"use strict";
// An independent OPC UA server (node-opcua) exposing a few variables, for
// testing the Python driver against something that is not asyncua.
//
//   node opcua_server.js PORT PKI_DIR [CERT_PEM KEY_PEM]
//
// PORT 0 asks the OS for a free port. PKI_DIR is the certificate store
// (created if missing). The server uses CERT_PEM/KEY_PEM when given, else it
// makes its own certificate in PKI_DIR (node-opcua-pki may run the system
// `openssl` for that); its application URI is urn:open-mes:test:peer-server. Client certificates placed in PKI_DIR/trusted/certs
// before start are trusted; any other client certificate is rejected. Endpoints: None, and Basic256Sha256
// with SignAndEncrypt. Listens on 127.0.0.1 only; prints
// "READY <port> <endpoint url>" once it accepts connections; stops on
// SIGTERM/SIGINT or when stdin closes.
//
// Address space (namespace urn:open-mes:test:peer, keep in sync with
// tests/devices/test_opcua.py):
//
//   Objects/Line                     folder
//   Objects/Line/Speed      Double   12.5          s=Line.Speed
//   Objects/Line/Temperature Float   21.5          s=Line.Temperature
//   Objects/Line/Count      UInt32   +1 every 100 ms  s=Line.Count
//   Objects/Line/State      Int32    6 (PackML Execute)  s=Line.State
//   Objects/Line/Running    Boolean  true          s=Line.Running
//   Objects/Line/Name       String   "peer line"   s=Line.Name

const path = require("path");
const fs = require("fs");
const { OPCUAServer } = require("node-opcua-server");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");
const { nodesets } = require("node-opcua-nodesets");
const { MessageSecurityMode, SecurityPolicy } = require("node-opcua-secure-channel");
const { DataType, Variant } = require("node-opcua-variant");

async function main() {
    const port = Number.parseInt(process.argv[2] || "0", 10);
    const pki = path.resolve(process.argv[3] || path.join(process.cwd(), "pki"));
    const certificateFile = process.argv[4] ? path.resolve(process.argv[4]) : undefined;
    const privateKeyFile = process.argv[5] ? path.resolve(process.argv[5]) : undefined;
    fs.mkdirSync(pki, { recursive: true });

    const serverCertificateManager = new OPCUACertificateManager({
        rootFolder: pki,
        automaticallyAcceptUnknownCertificate: false,
    });
    await serverCertificateManager.initialize();

    const server = new OPCUAServer({
        port,
        hostname: "127.0.0.1",
        host: "127.0.0.1",
        resourcePath: "/peer",
        nodeset_filename: [nodesets.standard],
        serverCertificateManager,
        certificateFile,
        privateKeyFile,
        securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
        securityModes: [MessageSecurityMode.None, MessageSecurityMode.SignAndEncrypt],
        allowAnonymous: true,
        serverInfo: { applicationUri: "urn:open-mes:test:peer-server", productUri: "urn:open-mes:test:peer" },
        buildInfo: {
            productName: "open-mes test peer",
            manufacturerName: "node-opcua",
            softwareVersion: "2.182.2",
            buildNumber: "1",
        },
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace("urn:open-mes:test:peer");
    const line = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Line", nodeId: "s=Line" });
    const constant = (name, dataType, value) =>
        ns.addVariable({
            componentOf: line,
            browseName: name,
            nodeId: `s=Line.${name}`,
            dataType,
            value: new Variant({ dataType, value }),
        });
    constant("Speed", DataType.Double, 12.5);
    constant("Temperature", DataType.Float, 21.5);
    constant("State", DataType.Int32, 6);
    constant("Running", DataType.Boolean, true);
    constant("Name", DataType.String, "peer line");
    const count = constant("Count", DataType.UInt32, 0);
    let n = 0;
    const timer = setInterval(() => {
        n += 1;
        count.setValueFromSource(new Variant({ dataType: DataType.UInt32, value: n }));
    }, 100);

    await server.start();
    const url = server.getEndpointUrl();
    const actual = Number.parseInt(new URL(url.replace(/^opc\.tcp:/, "http:")).port, 10);
    process.stdout.write(`READY ${actual} ${url}\n`);

    let stopping = false;
    const stop = async () => {
        if (stopping) return;
        stopping = true;
        clearInterval(timer);
        setTimeout(() => process.exit(0), 2000).unref();
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
    process.stdin.on("end", stop);
    process.stdin.resume();
}

main().catch((err) => {
    process.stderr.write(`opcua peer: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
