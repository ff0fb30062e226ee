// The registry's VNet: a subnet delegated to the function app's VNet integration, and one for
// the private endpoints of the app and its storage. Egress from the integration subnet goes
// through a NAT gateway (optional): the subnets have no default outbound access, so without it
// the app reaches only what its private endpoints and the VNet offer.

@description('Azure region.')
param location string

@description('Name prefix for the resources.')
param name string

@description('Address space of the VNet.')
param addressPrefix string

@description('Subnet for the function app\'s outbound VNet integration (Flex Consumption: /27 or larger).')
param integrationSubnetPrefix string

@description('Subnet for private endpoints.')
param privateEndpointSubnetPrefix string

@description('A NAT gateway (with one static public IP) for the app\'s outbound traffic: Entra ID\'s signing keys, upstream registries (pull-through cache, import), public webhook receivers.')
param natGateway bool

param tags object

resource egressIp 'Microsoft.Network/publicIPAddresses@2024-01-01' = if (natGateway) {
  name: '${name}-egress-ip'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
  }
}

resource nat 'Microsoft.Network/natGateways@2024-01-01' = if (natGateway) {
  name: '${name}-nat'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 4
    publicIpAddresses: [
      {
        id: egressIp.id
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: '${name}-vnet'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'integration'
        properties: {
          addressPrefix: integrationSubnetPrefix
          defaultOutboundAccess: false
          natGateway: natGateway ? {
            id: nat.id
          } : null
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          defaultOutboundAccess: false
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

output vnetId string = vnet.id
@description('The address the registry\'s outbound traffic comes from (allow-list it at upstreams and receivers); empty without a NAT gateway.')
output egressAddress string = natGateway ? egressIp.properties.ipAddress : ''
output integrationSubnetId string = vnet.properties.subnets[0].id
output privateEndpointSubnetId string = vnet.properties.subnets[1].id
